//! The default system: init, pasid-server, iommu-server in front of one IOMMU, and two
//! driver servers, each with its own device.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::{
    Cap, CapKind, Device, Iommu, IommuKind, Object, ObjectKind, Process, Rights, Role,
    SystemDescription,
};

/// Badge of init's capabilities to the servers: their administrative requests.
pub const ADMIN_BADGE: u64 = 0xAD;
/// Badge of iommu-server's capability to pasid-server.
pub const IOMMU_SERVER_PASID_BADGE: u64 = 0x10;
/// Pages of contiguous memory iommu-server gets for the IOMMU's tables and queues.
pub const TABLE_PAGES: u64 = 2048;
/// Pages (separate frames) each driver gets.
pub const DRIVER_PAGES: u64 = 64;

fn cap(name: &str, kind: CapKind) -> Cap {
    Cap {
        name: name.into(),
        kind,
    }
}

fn endpoint(name: &str, object: &str, badge: u64, rights: Rights) -> Cap {
    cap(
        name,
        CapKind::Endpoint {
            object: object.into(),
            badge,
            rights,
        },
    )
}

fn notification(name: &str, object: &str, badge: u64, rights: Rights) -> Cap {
    cap(
        name,
        CapKind::Notification {
            object: object.into(),
            badge,
            rights,
        },
    )
}

fn object(name: &str, kind: ObjectKind) -> Object {
    Object {
        name: name.into(),
        kind,
    }
}

/// The default system with an IOMMU of `kind` (`smmu0` for SMMUv3, `dmar0` for VT-d).
/// Devices `dev-a` (stream / requester ID 0x08, PCI 00:01.0) and `dev-b` (0x10,
/// 00:02.0) are driven by `driver-a` and `driver-b`.
pub fn default_system(kind: IommuKind) -> SystemDescription {
    let iommu = match kind {
        IommuKind::Smmuv3 => "smmu0",
        IommuKind::Vtd => "dmar0",
    };
    let mut d = SystemDescription {
        name: format!("default ({})", kind.name()),
        ram_bytes: 64 << 20,
        iommus: vec![Iommu {
            name: iommu.into(),
            kind,
        }],
        devices: Vec::new(),
        objects: vec![
            object("faults", ObjectKind::Endpoint),
            object("pasid", ObjectKind::Endpoint),
            object("iommu", ObjectKind::Endpoint),
            object("iommu-irq", ObjectKind::Notification),
        ],
        processes: vec![
            Process {
                name: "init".into(),
                program: "init".into(),
                role: Role::Root,
                caps: vec![
                    endpoint("faults", "faults", 0, Rights::READ),
                    endpoint("iommu-admin", "iommu", ADMIN_BADGE, Rights::WRITE),
                    endpoint("pasid-admin", "pasid", ADMIN_BADGE, Rights::WRITE),
                ],
                fault_endpoint: None,
            },
            Process {
                name: "pasid-server".into(),
                program: "pasid-server".into(),
                role: Role::PasidServer,
                caps: vec![endpoint("endpoint", "pasid", 0, Rights::READ)],
                fault_endpoint: Some(("faults".into(), 1)),
            },
            Process {
                name: "iommu-server".into(),
                program: "iommu-server".into(),
                role: Role::IommuServer,
                caps: vec![
                    endpoint("endpoint", "iommu", 0, Rights::READ),
                    endpoint("pasid", "pasid", IOMMU_SERVER_PASID_BADGE, Rights::WRITE),
                    cap(
                        "mmio",
                        CapKind::Mmio {
                            iommu: iommu.into(),
                        },
                    ),
                    cap(
                        "irq",
                        CapKind::Irq {
                            iommu: iommu.into(),
                        },
                    ),
                    notification("irq-notification", "iommu-irq", 1, Rights::RW),
                    cap(
                        "tables",
                        CapKind::Memory {
                            pages: TABLE_PAGES,
                            contiguous: true,
                        },
                    ),
                ],
                fault_endpoint: Some(("faults".into(), 2)),
            },
        ],
    };
    add_driver(&mut d, "driver-a", 0x1A, Some(("dev-a", 0x08)));
    add_driver(&mut d, "driver-b", 0x1B, Some(("dev-b", 0x10)));
    d
}

/// Adds a driver server `name` whose iommu-server capability carries `badge`; with
/// `device` = (name, stream), also that device (behind the first IOMMU), the device
/// itself and iommu-server's device capability for it (badge `badge << 4`). The driver
/// gets its fault notification (signalled by iommu-server), a DMA-completion
/// notification and [`DRIVER_PAGES`] pages of memory; its end is reported to init with
/// the next free fault badge.
pub fn add_driver(d: &mut SystemDescription, name: &str, badge: u64, device: Option<(&str, u32)>) {
    let iommu = d.iommus[0].name.clone();
    let faults = format!("faults-{name}");
    let done = format!("dma-done-{name}");
    d.objects.push(object(&faults, ObjectKind::Notification));
    d.objects.push(object(&done, ObjectKind::Notification));
    let mut caps = vec![
        endpoint("iommu", "iommu", badge, Rights::WRITE_GRANT),
        notification("faults", &faults, 0, Rights::READ),
        notification("dma-done", &done, 1, Rights::RW),
        cap(
            "mem",
            CapKind::Memory {
                pages: DRIVER_PAGES,
                contiguous: false,
            },
        ),
    ];
    if let Some((dev, stream)) = device {
        d.devices.push(Device {
            name: dev.into(),
            iommu,
            stream,
            buffer_bytes: 64 << 10,
        });
        caps.push(cap(
            &format!("iommu:{dev}"),
            CapKind::DeviceEndpoint {
                object: "iommu".into(),
                badge: badge << 4,
                device: dev.into(),
            },
        ));
        caps.push(cap(
            &format!("device:{dev}"),
            CapKind::Device {
                device: dev.to_string(),
            },
        ));
    }
    let fault_badge = d
        .processes
        .iter()
        .filter_map(|p| p.fault_endpoint.as_ref().map(|(_, b)| *b))
        .max()
        .unwrap_or(0)
        + 1;
    d.processes.push(Process {
        name: name.into(),
        program: "driver".into(),
        role: Role::Driver,
        caps,
        fault_endpoint: Some(("faults".into(), fault_badge)),
    });
    let server = d
        .processes
        .iter_mut()
        .find(|p| p.role == Role::IommuServer)
        .expect("a system with drivers has iommu-server");
    server.caps.push(notification(
        &format!("fault:{name}"),
        &faults,
        1,
        Rights::WRITE,
    ));
}

/// The name of a driver's fault notification object (for tests that look it up).
pub fn fault_object(driver: &str) -> String {
    format!("faults-{driver}")
}
