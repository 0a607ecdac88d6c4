//! The system description init executes: which processes exist (program and role), the
//! capabilities each is given (endpoints with badge and rights, iommu-server device
//! capabilities, notifications, devices, IOMMU register frames and interrupts, memory),
//! the devices and the IOMMUs in front of them, and how much RAM the machine has.
//!
//! init creates the kernel objects listed in [`SystemDescription::objects`], then each
//! process, hands it exactly the capabilities listed for it (minting badges where a
//! capability has one), sets its fault endpoint and starts it; nothing else is handed
//! out. The host simulation's init (`sim-system`) executes it. The seL4 image's root task
//! (`sel4/apps/init`) still builds its processes from a static list of its own; the crate
//! is `no_std` + `alloc` so that it can execute this description instead.
//! [`dot::render`] draws who holds what (`cargo xtask capgraph`).
//!
//! # Conventions the programs rely on
//! Capability names are what a process looks its capabilities up by:
//! - iommu-server: `endpoint` (its own, receive), `pasid` (pasid-server), `mmio` and
//!   `irq` (its IOMMU), `irq-notification` (bound; the IOMMU's interrupt signals it),
//!   `tables` (contiguous memory for the IOMMU's tables and queues), and
//!   `fault:<client>` for each client's fault notification.
//! - pasid-server: `endpoint`.
//! - a driver (iommu-server client): `iommu` (badge names the client),
//!   `iommu:<device>` (badge names the device: iommu-server's device capability),
//!   `device:<device>` (the device itself), `faults` (signalled when its fault ring has
//!   records), `dma-done` (signalled when its device's job ends), `mem` (`mem.0`,
//!   `mem.1`, ...: separate frames it may grant).
//! - init: `faults` (where every process's end is reported), `iommu-admin` and
//!   `pasid-admin` (the administrative badges of the two servers).
#![no_std]

extern crate alloc;

pub mod default;
pub mod dot;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub use default::default_system;

/// Which IOMMU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IommuKind {
    /// Arm SMMUv3.
    Smmuv3,
    /// Intel VT-d.
    Vtd,
}

impl IommuKind {
    pub const fn name(self) -> &'static str {
        match self {
            IommuKind::Smmuv3 => "SMMUv3",
            IommuKind::Vtd => "VT-d",
        }
    }
}

/// An IOMMU of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iommu {
    pub name: String,
    pub kind: IommuKind,
}

/// A DMA-capable device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// The IOMMU in front of it.
    pub iommu: String,
    /// Its StreamID (SMMUv3) or requester ID `bus << 8 | devfn` (VT-d).
    pub stream: u32,
    /// Size of its on-device buffer (its BAR) in bytes.
    pub buffer_bytes: u64,
}

/// A kernel object init creates and hands out capabilities to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Endpoint,
    Notification,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub kind: ObjectKind,
}

/// Rights of a capability (as seL4's: read = receive / wait, write = send / signal,
/// grant = transfer capabilities along).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights(pub u8);

impl Rights {
    pub const READ: Rights = Rights(1);
    pub const WRITE: Rights = Rights(2);
    pub const GRANT: Rights = Rights(4);
    pub const RW: Rights = Rights(3);
    /// Calls that may carry capabilities.
    pub const WRITE_GRANT: Rights = Rights(6);

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::fmt::Display for Rights {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (bit, c) in [
            (Rights::READ, "R"),
            (Rights::WRITE, "W"),
            (Rights::GRANT, "G"),
        ] {
            if self.contains(bit) {
                f.write_str(c)?;
            }
        }
        Ok(())
    }
}

/// What a capability names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapKind {
    /// An endpoint; a non-zero badge is minted onto it (and identifies the holder to the
    /// receiver).
    Endpoint {
        object: String,
        badge: u64,
        rights: Rights,
    },
    /// An endpoint of iommu-server whose badge names a device: iommu-server's device
    /// capability (open, attach, fault queue of that device). Write and grant rights.
    DeviceEndpoint {
        object: String,
        badge: u64,
        device: String,
    },
    /// A notification; signals through a badged capability set the badge's bits.
    Notification {
        object: String,
        badge: u64,
        rights: Rights,
    },
    /// The device itself: its DMA engine and buffer (what its driver programs).
    Device { device: String },
    /// An IOMMU's register frame.
    Mmio { iommu: String },
    /// An IOMMU's interrupt.
    Irq { iommu: String },
    /// Memory: `pages` pages of RAM, as one physically contiguous frame, or as separate
    /// frames named `<name>.0`, `<name>.1`, ...
    Memory { pages: u64, contiguous: bool },
}

/// A capability given to a process, under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub name: String,
    pub kind: CapKind,
}

/// What a process is in the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// init: builds the system, then supervises it.
    Root,
    PasidServer,
    IommuServer,
    /// A driver server: a client of iommu-server.
    Driver,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Role::Root => "root task",
            Role::PasidServer => "PASID authority",
            Role::IommuServer => "IOMMU authority",
            Role::Driver => "driver server",
        }
    }
}

/// A process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub name: String,
    /// The program it runs.
    pub program: String,
    pub role: Role,
    pub caps: Vec<Cap>,
    /// Where the kernel reports its end: an endpoint and the badge identifying it there.
    pub fault_endpoint: Option<(String, u64)>,
}

/// A whole system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemDescription {
    pub name: String,
    /// RAM of the machine in bytes.
    pub ram_bytes: u64,
    pub iommus: Vec<Iommu>,
    pub devices: Vec<Device>,
    pub objects: Vec<Object>,
    pub processes: Vec<Process>,
}

/// Why a description is not executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl core::fmt::Display for Invalid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), Invalid> {
    let mut seen: Vec<&str> = Vec::new();
    for n in names {
        if n.is_empty() {
            return Err(Invalid(format!("a {what} without a name")));
        }
        if seen.contains(&n) {
            return Err(Invalid(format!("{what} name `{n}` used twice")));
        }
        seen.push(n);
    }
    Ok(())
}

impl SystemDescription {
    pub fn process(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == name)
    }

    pub fn process_mut(&mut self, name: &str) -> Option<&mut Process> {
        self.processes.iter_mut().find(|p| p.name == name)
    }

    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub fn iommu(&self, name: &str) -> Option<&Iommu> {
        self.iommus.iter().find(|i| i.name == name)
    }

    pub fn object(&self, name: &str) -> Option<&Object> {
        self.objects.iter().find(|o| o.name == name)
    }

    /// The processes with a given role.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Process> {
        self.processes.iter().filter(move |p| p.role == role)
    }

    /// Every (process, capability) naming object `object`.
    pub fn holders<'a>(&'a self, object: &'a str) -> impl Iterator<Item = (&'a Process, &'a Cap)> {
        self.processes.iter().flat_map(move |p| {
            p.caps.iter().filter_map(move |c| match &c.kind {
                CapKind::Endpoint { object: o, .. }
                | CapKind::DeviceEndpoint { object: o, .. }
                | CapKind::Notification { object: o, .. }
                    if o == object =>
                {
                    Some((p, c))
                }
                _ => None,
            })
        })
    }

    /// Checks that every name is unique and every reference resolves, that there is
    /// exactly one root task, that endpoint and notification badges are non-zero where
    /// they identify a sender and distinct between processes, and that each device is
    /// driven by at most one process.
    pub fn validate(&self) -> Result<(), Invalid> {
        unique("process", self.processes.iter().map(|p| p.name.as_str()))?;
        unique("device", self.devices.iter().map(|d| d.name.as_str()))?;
        unique("IOMMU", self.iommus.iter().map(|i| i.name.as_str()))?;
        unique("object", self.objects.iter().map(|o| o.name.as_str()))?;
        if self.with_role(Role::Root).count() != 1 {
            return Err(Invalid("there must be exactly one root task".into()));
        }
        for d in &self.devices {
            if self.iommu(&d.iommu).is_none() {
                return Err(Invalid(format!(
                    "device `{}` is behind unknown IOMMU `{}`",
                    d.name, d.iommu
                )));
            }
            if self
                .devices
                .iter()
                .any(|o| o.name != d.name && o.iommu == d.iommu && o.stream == d.stream)
            {
                return Err(Invalid(format!(
                    "two devices with stream {:#x} behind `{}`",
                    d.stream, d.iommu
                )));
            }
        }
        let mut badges: Vec<(&str, u64, &str)> = Vec::new();
        let mut driven: Vec<&str> = Vec::new();
        for p in &self.processes {
            unique("capability", p.caps.iter().map(|c| c.name.as_str()))?;
            if let Some((ep, _)) = &p.fault_endpoint {
                self.expect_object(&p.name, ep, ObjectKind::Endpoint)?;
            }
            for c in &p.caps {
                match &c.kind {
                    CapKind::Endpoint { object, badge, .. }
                    | CapKind::DeviceEndpoint { object, badge, .. } => {
                        self.expect_object(&p.name, object, ObjectKind::Endpoint)?;
                        if *badge != 0 {
                            if let Some((_, _, other)) = badges
                                .iter()
                                .find(|(o, b, q)| o == object && b == badge && *q != p.name)
                            {
                                return Err(Invalid(format!(
                                    "`{}` and `{other}` share badge {badge:#x} on `{object}`",
                                    p.name
                                )));
                            }
                            badges.push((object, *badge, &p.name));
                        }
                        if let CapKind::DeviceEndpoint { device, badge, .. } = &c.kind {
                            if *badge == 0 {
                                return Err(Invalid(format!(
                                    "`{}`: a device capability needs a badge",
                                    p.name
                                )));
                            }
                            self.expect_device(&p.name, device)?;
                        }
                    }
                    CapKind::Notification { object, .. } => {
                        self.expect_object(&p.name, object, ObjectKind::Notification)?;
                    }
                    CapKind::Device { device } => {
                        self.expect_device(&p.name, device)?;
                        if driven.contains(&device.as_str()) {
                            return Err(Invalid(format!(
                                "device `{device}` is given to two processes"
                            )));
                        }
                        driven.push(device);
                    }
                    CapKind::Mmio { iommu } | CapKind::Irq { iommu } => {
                        if self.iommu(iommu).is_none() {
                            return Err(Invalid(format!(
                                "`{}` holds unknown IOMMU `{iommu}`",
                                p.name
                            )));
                        }
                    }
                    CapKind::Memory { pages, .. } => {
                        if *pages == 0 {
                            return Err(Invalid(format!(
                                "`{}`: empty memory `{}`",
                                p.name, c.name
                            )));
                        }
                    }
                }
            }
        }
        if self.memory_bytes() > self.ram_bytes {
            return Err(Invalid(format!(
                "processes are given {} bytes of memory, the machine has {}",
                self.memory_bytes(),
                self.ram_bytes
            )));
        }
        Ok(())
    }

    fn expect_object(&self, process: &str, name: &str, kind: ObjectKind) -> Result<(), Invalid> {
        match self.object(name) {
            Some(o) if o.kind == kind => Ok(()),
            Some(_) => Err(Invalid(format!(
                "`{process}` holds `{name}` as a {kind:?}, which it is not"
            ))),
            None => Err(Invalid(format!(
                "`{process}` holds unknown object `{name}`"
            ))),
        }
    }

    fn expect_device(&self, process: &str, name: &str) -> Result<(), Invalid> {
        self.device(name)
            .map(|_| ())
            .ok_or_else(|| Invalid(format!("`{process}` holds unknown device `{name}`")))
    }

    /// Bytes of memory given to processes.
    pub fn memory_bytes(&self) -> u64 {
        self.processes
            .iter()
            .flat_map(|p| &p.caps)
            .map(|c| match c.kind {
                CapKind::Memory { pages, .. } => pages * 4096,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn the_default_system_is_valid_and_has_the_parts_it_should() {
        for kind in [IommuKind::Smmuv3, IommuKind::Vtd] {
            let d = default_system(kind);
            assert_eq!(d.validate(), Ok(()));
            assert_eq!(d.with_role(Role::Driver).count(), 2);
            assert_eq!(d.iommus[0].kind, kind);
            // Only iommu-server and init reach pasid-server.
            let mut holders: Vec<&str> = d.holders("pasid").map(|(p, _)| p.name.as_str()).collect();
            holders.sort();
            assert_eq!(holders, ["init", "iommu-server", "pasid-server"]);
            // Only iommu-server maps the IOMMU.
            for p in &d.processes {
                let maps = p
                    .caps
                    .iter()
                    .any(|c| matches!(c.kind, CapKind::Mmio { .. } | CapKind::Irq { .. }));
                assert_eq!(maps, p.role == Role::IommuServer, "{}", p.name);
            }
            // Each driver holds exactly its own device.
            for (p, dev) in [("driver-a", "dev-a"), ("driver-b", "dev-b")] {
                let devs: Vec<&CapKind> = d
                    .process(p)
                    .unwrap()
                    .caps
                    .iter()
                    .map(|c| &c.kind)
                    .filter(|k| matches!(k, CapKind::Device { .. }))
                    .collect();
                assert_eq!(
                    devs,
                    [&CapKind::Device {
                        device: dev.to_string()
                    }]
                );
            }
        }
    }

    #[test]
    fn broken_descriptions_are_refused() {
        let base = default_system(IommuKind::Smmuv3);
        let mut d = base.clone();
        d.processes[1].name = d.processes[2].name.clone();
        assert!(d
            .validate()
            .unwrap_err()
            .0
            .contains("process name `iommu-server` used twice"));

        let mut d = base.clone();
        let b = d.process_mut("driver-b").unwrap();
        for c in &mut b.caps {
            if let CapKind::Endpoint { object, badge, .. } = &mut c.kind {
                if object == "iommu" {
                    *badge = 0x1a;
                }
            }
        }
        assert!(d.validate().unwrap_err().0.contains("share badge"));

        let mut d = base.clone();
        d.process_mut("driver-b").unwrap().caps.push(Cap {
            name: "stolen".into(),
            kind: CapKind::Device {
                device: "dev-a".into(),
            },
        });
        assert!(d.validate().unwrap_err().0.contains("two processes"));

        let mut d = base.clone();
        d.process_mut("driver-a").unwrap().caps.push(Cap {
            name: "x".into(),
            kind: CapKind::Notification {
                object: "iommu".into(),
                badge: 0,
                rights: Rights::READ,
            },
        });
        assert!(d.validate().unwrap_err().0.contains("which it is not"));

        let mut d = base.clone();
        d.ram_bytes = 4096;
        assert!(d.validate().unwrap_err().0.contains("bytes of memory"));

        let mut d = base;
        d.devices[1].stream = d.devices[0].stream;
        assert!(d.validate().unwrap_err().0.contains("two devices"));
    }
}
