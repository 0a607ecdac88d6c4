//! The one error vocabulary of every server in the system.

use serde::{Deserialize, Serialize};

/// Why a request failed. Shared by pasid-server and iommu-server.
///
/// Values are stable wire numbers starting at 1 (0 is "success" in a reply's status word)
/// and must never be renumbered.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Error {
    /// The caller's capability does not give it authority over the named object.
    Denied = 1,
    /// The named object does not exist (or no longer exists).
    NotFound = 2,
    /// The object is in use (attached, referenced, owned by someone else).
    Busy = 3,
    /// A finite resource is exhausted (PASID space, IOVA space, table memory).
    NoSpace = 4,
    /// The request is well formed but its arguments are not acceptable
    /// (bad range, misalignment, a state transition the object does not allow).
    Invalid = 5,
    /// The object to be created already exists.
    Exists = 6,
    /// Hardware did not answer in time.
    Timeout = 7,
    /// Hardware reported an error.
    HardwareError = 8,
    /// The hardware or the server does not support the feature asked for.
    Unsupported = 9,
    /// The message could not be decoded (truncated, malformed, trailing bytes).
    BadMessage = 10,
    /// The message carries a protocol version this server does not speak.
    BadVersion = 11,
    /// The message's label names no request this server knows.
    UnknownLabel = 12,
    /// A per-client or per-set quota would be exceeded.
    QuotaExceeded = 13,
}

impl Error {
    /// Every variant, in wire order.
    pub const ALL: [Error; 13] = [
        Error::Denied,
        Error::NotFound,
        Error::Busy,
        Error::NoSpace,
        Error::Invalid,
        Error::Exists,
        Error::Timeout,
        Error::HardwareError,
        Error::Unsupported,
        Error::BadMessage,
        Error::BadVersion,
        Error::UnknownLabel,
        Error::QuotaExceeded,
    ];

    /// The wire number of this error.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Decodes a wire number; `None` for 0 and unknown numbers.
    pub fn from_code(code: u32) -> Option<Error> {
        Error::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// A short human-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            Error::Denied => "Denied",
            Error::NotFound => "NotFound",
            Error::Busy => "Busy",
            Error::NoSpace => "NoSpace",
            Error::Invalid => "Invalid",
            Error::Exists => "Exists",
            Error::Timeout => "Timeout",
            Error::HardwareError => "HardwareError",
            Error::Unsupported => "Unsupported",
            Error::BadMessage => "BadMessage",
            Error::BadVersion => "BadVersion",
            Error::UnknownLabel => "UnknownLabel",
            Error::QuotaExceeded => "QuotaExceeded",
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(e.code(), i as u32 + 1, "{e} renumbered");
            assert_eq!(Error::from_code(e.code()), Some(*e));
        }
        assert_eq!(Error::from_code(0), None);
        assert_eq!(Error::from_code(14), None);
        assert_eq!(Error::from_code(u32::MAX), None);
    }
}
