//! Round trips, error paths and property tests of the wire format.

use ipc_protocol::iommu::*;
use ipc_protocol::pasid::*;
use ipc_protocol::{
    decode_everything, decode_reply, decode_request, encode_reply, encode_request, Error, Request,
    MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use proptest::prelude::*;

fn pasid_requests() -> Vec<PasidRequest> {
    let set = SetId(0x0000_0003_0000_0007);
    let range = PasidRange {
        min: Some(16),
        max: Some(0xfffff),
    };
    vec![
        PasidRequest::CreateSet {
            owner: u64::MAX,
            quota: 1 << 20,
        },
        PasidRequest::DestroySet { set },
        PasidRequest::Alloc {
            set,
            range: PasidRange::default(),
        },
        PasidRequest::AllocShared {
            set,
            space: 42,
            range,
        },
        PasidRequest::Get { pasid: 1 },
        PasidRequest::Put { pasid: PASID_MAX },
        PasidRequest::Free { pasid: 77 },
        PasidRequest::Lookup { pasid: 5 },
        PasidRequest::RevokeOwner { owner: 9 },
        PasidRequest::QuerySpace,
    ]
}

fn iommu_requests() -> Vec<IommuRequest> {
    let device = DeviceId(3);
    let ioas = IoasId(u32::MAX);
    vec![
        IommuRequest::OpenDevice,
        IommuRequest::CloseDevice { device },
        IommuRequest::QueryDevice { device },
        IommuRequest::AllocIoas,
        IommuRequest::DestroyIoas { ioas },
        IommuRequest::Map {
            ioas,
            iova: IovaPlacement::Fixed(u64::MAX - 0xfff),
            length: 1 << 30,
            memory: MemoryRef {
                region: 2,
                offset: 0x3000,
            },
            perm: Perm::RW | Perm::PRIVILEGED,
        },
        IommuRequest::Map {
            ioas,
            iova: IovaPlacement::Anywhere { align: 1 << 21 },
            length: 4096,
            memory: MemoryRef {
                region: 0,
                offset: 0,
            },
            perm: Perm::READ,
        },
        IommuRequest::Unmap {
            ioas,
            iova: 0x1000,
            length: 0x2000,
        },
        IommuRequest::Attach {
            device,
            pasid: None,
            ioas,
        },
        IommuRequest::Attach {
            device,
            pasid: Some(PASID_MAX),
            ioas,
        },
        IommuRequest::Detach {
            device,
            pasid: Some(1),
        },
        IommuRequest::SvaBind {
            device,
            space: AddressSpaceRef(1),
        },
        IommuRequest::SvaUnbind { device, pasid: 2 },
        IommuRequest::AllocFaultQueue {
            device,
            ring: MemoryRef {
                region: 1,
                offset: 0,
            },
            depth: 64,
        },
        IommuRequest::FreeFaultQueue {
            queue: FaultQueueId(1),
        },
        IommuRequest::PageResponse {
            queue: FaultQueueId(1),
            cookie: u64::MAX,
            code: PageResponseCode::Invalid,
        },
        IommuRequest::AllocPasid { device },
        IommuRequest::FreePasid { pasid: 0x1234 },
        IommuRequest::GrantMemory { frames: 16 },
        IommuRequest::RevokeMemory { region: 3 },
        IommuRequest::ClientDied { client: 2 },
        IommuRequest::ClientUsage { client: u32::MAX },
    ]
}

fn encode<R: Request>(r: &R) -> Vec<u8> {
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let n = encode_request(r, &mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn every_request_round_trips_with_its_label() {
    let mut labels = std::collections::HashSet::new();
    for r in pasid_requests() {
        let bytes = encode(&r);
        assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), PROTOCOL_VERSION);
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), r.label());
        let d = decode_request::<PasidRequest>(&bytes);
        assert_eq!(d.label, r.label());
        assert_eq!(d.request, Ok(r));
        labels.insert(r.label());
    }
    for r in iommu_requests() {
        let d = decode_request::<IommuRequest>(&encode(&r));
        assert_eq!(d.request, Ok(r));
        labels.insert(r.label());
    }
    // Labels are unique across both servers (Map appears twice above).
    assert_eq!(
        labels.len(),
        pasid_requests().len() + iommu_requests().len() - 2
    );
}

#[test]
fn a_request_sent_to_the_wrong_server_is_an_unknown_label() {
    for r in pasid_requests() {
        assert_eq!(
            decode_request::<IommuRequest>(&encode(&r)).request,
            Err(Error::UnknownLabel)
        );
    }
    for r in iommu_requests() {
        assert_eq!(
            decode_request::<PasidRequest>(&encode(&r)).request,
            Err(Error::UnknownLabel)
        );
    }
}

#[test]
fn bad_version_truncation_and_trailing_bytes_are_errors() {
    for r in pasid_requests() {
        let bytes = encode(&r);
        let mut v = bytes.clone();
        v[0] ^= 0x80;
        let d = decode_request::<PasidRequest>(&v);
        assert_eq!((d.label, d.request), (r.label(), Err(Error::BadVersion)));

        for cut in 0..bytes.len() {
            let d = decode_request::<PasidRequest>(&bytes[..cut]);
            assert!(d.request.is_err(), "{r:?} truncated to {cut} decoded");
            if cut < 4 {
                assert_eq!(d.request, Err(Error::BadMessage));
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_request::<PasidRequest>(&long).request,
            Err(Error::BadMessage)
        );
    }
}

#[test]
fn a_body_that_disagrees_with_its_label_is_rejected() {
    // Header says Get (label 0x104) but the body is a Put.
    let mut bytes = encode(&PasidRequest::Put { pasid: 3 });
    bytes[2..4].copy_from_slice(&(PASID_LABEL_BASE + 4).to_le_bytes());
    assert_eq!(
        decode_request::<PasidRequest>(&bytes).request,
        Err(Error::BadMessage)
    );
}

#[test]
fn oversized_messages_are_rejected() {
    let mut bytes = encode(&PasidRequest::QuerySpace);
    bytes.resize(MAX_MESSAGE_BYTES + 1, 0);
    assert_eq!(
        decode_request::<PasidRequest>(&bytes).request,
        Err(Error::BadMessage)
    );
}

#[test]
fn replies_round_trip_and_carry_errors() {
    let label = PasidRequest::QuerySpace.label();
    let reply = PasidReply::Space(SpaceInfo {
        max_pasid: PASID_MAX,
        live: 3,
        caller_live: 2,
        caller_limit: 10,
    });
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let n = encode_reply(label, Ok(&reply), &mut buf).unwrap();
    assert_eq!(decode_reply::<PasidReply>(label, &buf[..n]), Ok(reply));
    // A reply to another request is not accepted as this one's.
    assert_eq!(
        decode_reply::<PasidReply>(label + 1, &buf[..n]),
        Err(Error::BadMessage)
    );
    assert_eq!(
        decode_reply::<PasidReply>(label, &buf[..n - 1]),
        Err(Error::BadMessage)
    );

    for e in Error::ALL {
        let n = encode_reply::<PasidReply>(label, Err(e), &mut buf).unwrap();
        assert_eq!(n, 8, "an error reply is only the header");
        assert_eq!(decode_reply::<PasidReply>(label, &buf[..n]), Err(e));
    }
    // An unknown status code is a bad message, not a panic.
    buf[4..8].copy_from_slice(&999u32.to_le_bytes());
    assert_eq!(
        decode_reply::<PasidReply>(label, &buf[..8]),
        Err(Error::BadMessage)
    );
}

#[test]
fn platform_requests_follow_the_existing_labels_and_their_replies_round_trip() {
    // Memory grants and the administrative requests came after FreePasid (0x020f).
    assert_eq!(IommuRequest::GrantMemory { frames: 1 }.label(), 0x0210);
    assert_eq!(IommuRequest::ClientUsage { client: 0 }.label(), 0x0213);
    assert!(!IommuRequest::is_known_label(0x0214));
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    for (req, reply) in [
        (
            IommuRequest::GrantMemory { frames: 2 },
            IommuReply::Granted { region: 7 },
        ),
        (
            IommuRequest::ClientDied { client: 1 },
            IommuReply::Released { frames: 12 },
        ),
        (
            IommuRequest::ClientUsage { client: 1 },
            IommuReply::Usage(ClientUsage {
                devices: 1,
                ioas: 2,
                mapped_bytes: 1 << 40,
                fault_queues: 1,
                pasids: 3,
                regions: 4,
            }),
        ),
    ] {
        let n = encode_reply(req.label(), Ok(&reply), &mut buf).unwrap();
        assert_eq!(
            decode_reply::<IommuReply>(req.label(), &buf[..n]),
            Ok(reply)
        );
    }
}

#[test]
fn encoding_into_a_small_buffer_is_an_error() {
    let r = PasidRequest::CreateSet {
        owner: u64::MAX,
        quota: u32::MAX,
    };
    let mut small = [0u8; 6];
    assert_eq!(encode_request(&r, &mut small), Err(Error::NoSpace));
    assert_eq!(encode_request(&r, &mut small[..2]), Err(Error::NoSpace));
}

fn all_valid_messages() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = pasid_requests().iter().map(encode).collect();
    v.extend(iommu_requests().iter().map(encode));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        decode_everything(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(
        label in 0x0100u16..0x0220,
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = PROTOCOL_VERSION.to_le_bytes().to_vec();
        bytes.extend_from_slice(&label.to_le_bytes());
        bytes.extend_from_slice(&body);
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..32,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let msgs = all_valid_messages();
        let mut bytes = msgs[which % msgs.len()].clone();
        for (pos, x) in flips {
            let i = pos % bytes.len();
            bytes[i] ^= x;
        }
        let keep = cut % (bytes.len() + 1);
        decode_everything(&bytes[..keep]);
        decode_everything(&bytes);
    }
}

/// The fuzz corpus holds a valid example of every request of both servers, so fuzzing and
/// corpus replays start from real messages. `FUZZ_CORPUS_WRITE=1` regenerates it.
#[test]
fn fuzz_corpus_covers_every_request() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let msgs = all_valid_messages();
    if std::env::var_os("FUZZ_CORPUS_WRITE").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, m) in msgs.iter().enumerate() {
            std::fs::write(dir.join(format!("request-{i:02}")), m).unwrap();
        }
    }
    let corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fuzz corpus directory")
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    for m in &msgs {
        assert!(corpus.contains(m), "corpus lacks {m:?}");
    }
}

/// Map and Unmap (and their replies) have fixed-layout bodies: every field at its offset,
/// little-endian, and the body exactly its record's size.
#[test]
fn map_and_unmap_bodies_have_a_fixed_layout() {
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let map = IommuRequest::Map {
        ioas: IoasId(0x0403_0201),
        iova: IovaPlacement::Anywhere { align: 0x2000 },
        length: 0x1_0000_0000,
        memory: MemoryRef {
            region: 7,
            offset: 0x1000,
        },
        perm: Perm::RW | Perm::EXEC,
    };
    let n = encode_request(&map, &mut buf).unwrap();
    #[rustfmt::skip]
    let want: [u8; 38] = [
        2, 0, 0x05, 0x02,                       // version 2, label 0x0205
        0x01, 0x02, 0x03, 0x04,                 // ioas
        1,                                      // placement: anywhere
        0x0b,                                   // perm: read | write | exec
        0, 0x20, 0, 0, 0, 0, 0, 0,              // align
        0, 0, 0, 0, 1, 0, 0, 0,                 // length
        7, 0, 0, 0,                             // region
        0, 0x10, 0, 0, 0, 0, 0, 0,              // offset
    ];
    assert_eq!(&buf[..n], &want);
    assert_eq!(decode_request::<IommuRequest>(&want).request, Ok(map));
    // A placement tag other than 0 and 1, a byte short or a byte long: malformed.
    let mut bad = want;
    bad[8] = 2;
    assert_eq!(
        decode_request::<IommuRequest>(&bad).request,
        Err(Error::BadMessage)
    );
    assert_eq!(
        decode_request::<IommuRequest>(&want[..37]).request,
        Err(Error::BadMessage)
    );
    let mut long = want.to_vec();
    long.push(0);
    assert_eq!(
        decode_request::<IommuRequest>(&long).request,
        Err(Error::BadMessage)
    );

    let unmap = IommuRequest::Unmap {
        ioas: IoasId(9),
        iova: 0x8000_0000,
        length: 0x3000,
    };
    let n = encode_request(&unmap, &mut buf).unwrap();
    #[rustfmt::skip]
    let want: [u8; 24] = [
        2, 0, 0x06, 0x02,
        9, 0, 0, 0,
        0, 0, 0, 0x80, 0, 0, 0, 0,
        0, 0x30, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(&buf[..n], &want);
    assert_eq!(decode_request::<IommuRequest>(&want).request, Ok(unmap));

    // Replies: header, status 0, the one u64.
    let n = encode_reply(0x0205, Ok(&IommuReply::Mapped { iova: 0x1234 }), &mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &[2, 0, 5, 2, 0, 0, 0, 0, 0x34, 0x12, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        decode_reply::<IommuReply>(0x0205, &buf[..n]),
        Ok(IommuReply::Mapped { iova: 0x1234 })
    );
    let n = encode_reply(
        0x0206,
        Ok(&IommuReply::Unmapped { length: 0x3000 }),
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[8..n], &0x3000u64.to_le_bytes());
    assert_eq!(
        decode_reply::<IommuReply>(0x0206, &buf[..n - 1]),
        Err(Error::BadMessage)
    );
    // Other replies keep their postcard bodies.
    let n = encode_reply(
        0x0203,
        Ok(&IommuReply::IoasAllocated { ioas: IoasId(1) }),
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        decode_reply::<IommuReply>(0x0203, &buf[..n]),
        Ok(IommuReply::IoasAllocated { ioas: IoasId(1) })
    );
}
