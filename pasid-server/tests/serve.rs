//! The server loop over a real endpoint: callers are known by badge only, bad messages get
//! error replies and the server keeps serving.

use ipc_protocol::pasid::*;
use ipc_protocol::{decode_reply, encode_request, Error, Request, MAX_MESSAGE_BYTES};
use pasid_server::{CallerPolicy, Config, PasidServer};
use platform::host::{endpoint, HostClient, HostError};
use platform::ClientEndpoint;

fn call(c: &mut HostClient, req: &PasidRequest) -> Result<PasidReply, Error> {
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let n = encode_request(req, &mut buf).unwrap();
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    let m = c.call(&buf[..n], &mut reply).unwrap();
    decode_reply(req.label(), &reply[..m])
}

fn raw(c: &mut HostClient, bytes: &[u8]) -> Vec<u8> {
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    let m = c.call(bytes, &mut reply).unwrap();
    reply[..m].to_vec()
}

#[test]
fn bad_messages_get_error_replies_and_the_server_keeps_serving() {
    let (mut server_ep, minter) = endpoint();
    let mut server = PasidServer::new(Config {
        max_pasid: PASID_MAX,
        callers: vec![CallerPolicy {
            badge: 1,
            max_live: 100,
            max_sets: 4,
            admin: false,
        }],
    })
    .unwrap();
    let t = std::thread::spawn(move || {
        let why = server.serve(&mut server_ep);
        (why, server.live())
    });
    let mut iommu = minter.mint(1);
    let mut stranger = minter.mint(2);
    drop(minter);

    let set = match call(
        &mut iommu,
        &PasidRequest::CreateSet {
            owner: 1,
            quota: 10,
        },
    ) {
        Ok(PasidReply::SetCreated { set }) => set,
        r => panic!("{r:?}"),
    };
    let status = |reply: &[u8]| u32::from_le_bytes(reply[4..8].try_into().unwrap());
    // Empty, truncated, wrong version, unknown label, trailing bytes, oversized.
    assert_eq!(status(&raw(&mut iommu, &[])), Error::BadMessage.code());
    assert_eq!(
        status(&raw(&mut iommu, &[1, 0, 0])),
        Error::BadMessage.code()
    );
    assert_eq!(
        status(&raw(&mut iommu, &[9, 0, 0, 1])),
        Error::BadVersion.code()
    );
    assert_eq!(
        status(&raw(&mut iommu, &[2, 0, 0x77, 0x77])),
        Error::UnknownLabel.code()
    );
    let mut good = [0u8; MAX_MESSAGE_BYTES];
    let n = encode_request(&PasidRequest::QuerySpace, &mut good).unwrap();
    let mut trailing = good[..n].to_vec();
    trailing.push(0);
    let r = raw(&mut iommu, &trailing);
    assert_eq!(status(&r), Error::BadMessage.code());
    assert_eq!(
        &r[2..4],
        &PasidRequest::QuerySpace.label().to_le_bytes(),
        "reply names the request"
    );
    assert_eq!(
        status(&raw(&mut iommu, &vec![1u8; 4096])),
        Error::BadMessage.code()
    );

    // The badge decides, whatever the message says.
    assert_eq!(
        call(
            &mut stranger,
            &PasidRequest::Alloc {
                set,
                range: PasidRange::default()
            }
        ),
        Err(Error::Denied)
    );
    // And the server still serves.
    let p = call(
        &mut iommu,
        &PasidRequest::Alloc {
            set,
            range: PasidRange::default(),
        },
    );
    assert_eq!(
        p,
        Ok(PasidReply::Allocated {
            pasid: 1,
            new: true
        })
    );

    drop(iommu);
    drop(stranger);
    let (why, live) = t.join().unwrap();
    assert_eq!(why, HostError::Closed);
    assert_eq!(live, 1);
}
