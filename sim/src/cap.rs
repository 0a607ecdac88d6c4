//! Capabilities: what a slot of a process's capability space holds.

/// A process identifier (index in the kernel's process table; never reused).
pub type Pid = u32;

/// A slot of a process's capability space (seL4's CPtr). Slot 0 is always empty.
pub type CPtr = u32;

/// What a capability allows, as in seL4's `seL4_CapRights_t`.
///
/// - Endpoint: `READ` receives, `WRITE` sends and calls, `GRANT` lets a send or call
///   carry capabilities.
/// - Notification: `READ` waits and polls (and binds), `WRITE` signals.
/// - Frame: `READ` and `WRITE` read and write its contents (and map it).
/// - Other objects: any right allows their use; rights only shrink when copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const READ: Rights = Rights(1 << 0);
    pub const WRITE: Rights = Rights(1 << 1);
    pub const GRANT: Rights = Rights(1 << 2);
    pub const RW: Rights = Rights(Self::READ.0 | Self::WRITE.0);
    pub const ALL: Rights = Rights(Self::RW.0 | Self::GRANT.0);

    /// Whether every right of `other` is in `self`.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rights both have.
    pub const fn intersect(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }

    /// The raw bits (for rendering).
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl core::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl core::fmt::Display for Rights {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (bit, c) in [
            (Rights::READ, "R"),
            (Rights::WRITE, "W"),
            (Rights::GRANT, "G"),
        ] {
            f.write_str(if self.contains(bit) { c } else { "-" })?;
        }
        Ok(())
    }
}

/// The kind of object a capability names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjKind {
    Endpoint,
    Notification,
    /// Frames of simulated physical memory.
    Frame,
    /// A DMA-capable device: its DMA engine and on-device buffer (its BAR).
    Device,
    /// The register frame of an IOMMU.
    Mmio,
    /// The interrupt of an IOMMU.
    Irq,
    /// Free RAM and the authority to create objects (the root task's).
    Untyped,
    /// Supervision of a process: give it capabilities, start it, kill it.
    Process,
}

/// An object in the kernel's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Obj {
    Endpoint(u32),
    Notification(u32),
    Frame(u32),
    Device(u32),
    Mmio(u32),
    Irq(u32),
    Untyped,
    Process(Pid),
}

impl Obj {
    pub(crate) fn kind(self) -> ObjKind {
        match self {
            Obj::Endpoint(_) => ObjKind::Endpoint,
            Obj::Notification(_) => ObjKind::Notification,
            Obj::Frame(_) => ObjKind::Frame,
            Obj::Device(_) => ObjKind::Device,
            Obj::Mmio(_) => ObjKind::Mmio,
            Obj::Irq(_) => ObjKind::Irq,
            Obj::Untyped => ObjKind::Untyped,
            Obj::Process(_) => ObjKind::Process,
        }
    }
}

/// A capability: an object, the badge stamped on what is sent through it and its rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    pub obj: Obj,
    pub badge: u64,
    pub rights: Rights,
}

/// What a process may learn about one of its own capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapInfo {
    pub kind: ObjKind,
    pub badge: u64,
    pub rights: Rights,
}

/// Why a system call failed (after seL4's `seL4_Error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysError {
    /// The slot is empty or out of range.
    InvalidCap,
    /// The capability names another kind of object.
    WrongType,
    /// The capability lacks a right the operation needs.
    NoRights,
    /// Minting a badge onto an already badged capability (badges are never changed).
    AlreadyBadged,
    /// An offset or length outside the object.
    RangeError,
    /// The RAM pool cannot satisfy the request.
    NotEnoughMemory,
    /// An argument the operation does not accept.
    InvalidArgument,
    /// The operation does not apply in the object's current state (for example starting
    /// a process twice).
    IllegalOperation,
}

impl core::fmt::Display for SysError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for SysError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_shrink_and_render() {
        assert!(Rights::ALL.contains(Rights::RW));
        assert!(!Rights::READ.contains(Rights::WRITE));
        assert_eq!(
            Rights::RW.intersect(Rights::WRITE | Rights::GRANT),
            Rights::WRITE
        );
        assert_eq!(Rights::ALL.to_string(), "RWG");
        assert_eq!(Rights::WRITE.to_string(), "-W-");
    }
}
