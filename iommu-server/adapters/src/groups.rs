//! Page request groups as both IOMMUs answer them: once per group (VT-d's page group
//! response, SMMUv3's CMD_PRI_RESP), after the group's last request, while iommu-server
//! answers every request it delivered. [`OpenGroups`] counts, per group, the requests
//! delivered and not yet answered, and says when the group's one response is due and
//! with which code: the worst code given (any failure, else any invalid, else success).
//!
//! When the hardware's page request queue overflowed, it may have dropped (and answered
//! itself) the last request of any group still open: such groups are forgotten once
//! their delivered requests are answered, without a response of their own unless their
//! last request does arrive.

use alloc::collections::BTreeMap;

use ipc_protocol::iommu::PageResponseCode;
use ipc_protocol::records::fault_flags;
use ipc_protocol::Error;

/// What a page request asked for, as both IOMMUs report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub privileged: bool,
    /// The request carried a PASID.
    pub pasid: bool,
    /// The last request of its group.
    pub last: bool,
}

impl Requested {
    /// The `fault_flags` of the request's fault record: `READ` for read access only.
    pub fn flags(self) -> u16 {
        let bit = |on: bool, flag: u16| if on { flag } else { 0 };
        bit(self.read && !self.write, fault_flags::READ)
            | bit(self.privileged, fault_flags::PRIVILEGED)
            | bit(self.exec, fault_flags::EXEC)
            | bit(self.pasid, fault_flags::PASID_VALID)
            | bit(self.last, fault_flags::LAST_IN_GROUP)
    }
}

/// A page request group some of whose requests were delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpenGroup {
    /// Requests delivered and not answered yet.
    outstanding: u32,
    /// The group's last request was delivered: the group needs a response.
    last_seen: bool,
    /// The worst code answered so far.
    code: PageResponseCode,
    /// Open when the page request queue overflowed: its last request may have been
    /// dropped (and the group answered by the hardware).
    orphaned: bool,
}

/// The response code that wins when the requests of one group are answered differently.
pub const fn worse(a: PageResponseCode, b: PageResponseCode) -> PageResponseCode {
    const fn rank(c: PageResponseCode) -> u8 {
        match c {
            PageResponseCode::Success => 0,
            PageResponseCode::Invalid => 1,
            PageResponseCode::Failure => 2,
        }
    }
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The open page request groups, by the hardware's group key `K`.
#[derive(Debug)]
pub struct OpenGroups<K: Ord> {
    open: BTreeMap<K, OpenGroup>,
}

impl<K: Ord> Default for OpenGroups<K> {
    fn default() -> Self {
        OpenGroups {
            open: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> OpenGroups<K> {
    /// A request of group `key` is delivered; `last`: it is the group's last.
    pub fn delivered(&mut self, key: K, last: bool) {
        let g = self.open.entry(key).or_insert(OpenGroup {
            outstanding: 0,
            last_seen: false,
            code: PageResponseCode::Success,
            orphaned: false,
        });
        g.outstanding += 1;
        g.last_seen |= last;
    }

    /// The page request queue overflowed: groups nothing waits on are forgotten, the
    /// other groups whose last request has not arrived become orphans.
    pub fn overflowed(&mut self) {
        self.open.retain(|_, g| g.last_seen || g.outstanding > 0);
        for g in self.open.values_mut().filter(|g| !g.last_seen) {
            g.orphaned = true;
        }
    }

    /// One delivered request of group `key` is answered with `code`. Returns the code
    /// of the group's response when it is due now; `NotFound` when no delivered request
    /// of that group waits for an answer.
    pub fn answer(
        &mut self,
        key: K,
        code: PageResponseCode,
    ) -> Result<Option<PageResponseCode>, Error> {
        let g = self
            .open
            .get_mut(&key)
            .filter(|g| g.outstanding > 0)
            .ok_or(Error::NotFound)?;
        g.outstanding -= 1;
        g.code = worse(g.code, code);
        if g.outstanding > 0 {
            return Ok(None);
        }
        if !g.last_seen {
            if g.orphaned {
                self.open.remove(&key);
            }
            return Ok(None);
        }
        let code = g.code;
        self.open.remove(&key);
        Ok(Some(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageResponseCode::{Failure, Invalid, Success};

    #[test]
    fn request_flags() {
        let r = Requested {
            read: true,
            ..Requested::default()
        };
        assert_eq!(r.flags(), fault_flags::READ);
        let rw = Requested {
            write: true,
            pasid: true,
            last: true,
            ..r
        };
        assert_eq!(
            rw.flags(),
            fault_flags::PASID_VALID | fault_flags::LAST_IN_GROUP,
            "read and write: not read-only"
        );
        let x = Requested {
            exec: true,
            privileged: true,
            ..Requested::default()
        };
        assert_eq!(x.flags(), fault_flags::EXEC | fault_flags::PRIVILEGED);
    }

    #[test]
    fn a_group_answer_is_the_worst_of_its_requests() {
        assert_eq!(worse(Success, Success), Success);
        assert_eq!(worse(Success, Invalid), Invalid);
        assert_eq!(worse(Invalid, Success), Invalid);
        assert_eq!(worse(Invalid, Failure), Failure);
        assert_eq!(worse(Failure, Success), Failure);
    }

    #[test]
    fn the_response_is_due_when_the_last_request_is_answered() {
        let mut g = OpenGroups::default();
        g.delivered(5u32, false);
        g.delivered(5, true);
        assert_eq!(g.answer(5, Invalid), Ok(None));
        assert_eq!(g.answer(5, Success), Ok(Some(Invalid)));
        assert_eq!(g.answer(5, Success), Err(Error::NotFound), "answered once");
        assert_eq!(g.answer(6, Success), Err(Error::NotFound));
        // Answered before the last request arrived: the group stays open for it.
        g.delivered(7, false);
        assert_eq!(g.answer(7, Failure), Ok(None));
        g.delivered(7, true);
        assert_eq!(g.answer(7, Success), Ok(Some(Failure)));
    }

    #[test]
    fn overflow_orphans_groups_still_waiting_for_their_last_request() {
        let mut g = OpenGroups::default();
        g.delivered(1u32, false);
        g.delivered(2, false);
        assert_eq!(g.answer(2, Success), Ok(None));
        g.overflowed();
        // Group 2 had nothing outstanding: forgotten.
        assert_eq!(g.answer(2, Success), Err(Error::NotFound));
        // Group 1's answer ends it without a response of its own.
        assert_eq!(g.answer(1, Success), Ok(None));
        assert_eq!(g.answer(1, Success), Err(Error::NotFound));
    }
}
