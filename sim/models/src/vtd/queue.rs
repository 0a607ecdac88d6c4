//! Queued invalidation (§6.5.2): the queue registers, descriptor fetch and processing,
//! and the invalidation queue error (FSTS.IQE) that stops the queue at a bad descriptor.

use super::regs::*;
use super::{DeviceTlbInvalidation, PageResponse, State};

// --- Descriptor types (word 0 `[3:0]`) ---
const TYPE_CONTEXT_CACHE: u8 = 1;
const TYPE_IOTLB: u8 = 2;
const TYPE_DEVICE_TLB: u8 = 3;
const TYPE_IEC: u8 = 4;
const TYPE_WAIT: u8 = 5;
const TYPE_PASID_IOTLB: u8 = 6;
const TYPE_PASID_CACHE: u8 = 7;
const TYPE_PASID_DEVICE_TLB: u8 = 8;
const TYPE_PAGE_GROUP_RESPONSE: u8 = 9;

// --- Reserved bits QEMU 7.2 checks ---
const WAIT_RSVD_LO: u64 = 0xffff_ff80;
const WAIT_RSVD_HI: u64 = 0x3;
const CC_RSVD_LO: u64 = 0xfffc_0000_0000_ffc0;
const IOTLB_RSVD_LO: u64 = 0xffff_ffff_0000_ff00;
const IOTLB_RSVD_HI: u64 = 0xf80;
const DEVICE_TLB_RSVD_LO: u64 = 0xffff_0000_ffe0_fff8;
const DEVICE_TLB_RSVD_HI: u64 = 0xffe;

/// Wait descriptor bits: IF (4), SW (5).
const WAIT_IF: u64 = 1 << 4;
const WAIT_SW: u64 = 1 << 5;

/// Bytes covered by an ATS invalidation address with size bit `s` (the number of
/// trailing one bits above bit 11 gives the size, PCIe ATS "Invalidate Request").
fn ats_range(addr: u64, s: bool) -> (u64, u64) {
    if s {
        let bits = 13 + (addr >> 12).trailing_ones();
        if bits >= 64 {
            return (0, u64::MAX);
        }
        let size = 1u64 << bits;
        (addr & !0xfff & !(size - 1), size)
    } else {
        (addr & !0xfff, 0x1000)
    }
}

impl State {
    /// GCMD.QIE changed (§11.4.4).
    pub(crate) fn handle_qie(&mut self, enable: bool) {
        if enable {
            let iqa = self.regs.raw(IQA, 8);
            self.qi.base = iqa & self.caps.haw_mask() & !0xfff;
            let qs = (iqa & IQA_QS) as u32;
            self.qi.size = 1 << (qs + 8 - u32::from(self.qi.wide));
            self.qi.enabled = true;
            self.regs.update(GSTS, 4, 0, u64::from(GCMD_QIE));
            if self.qi.tail != 0 && self.regs.raw(FSTS, 4) as u32 & FSTS_IQE == 0 {
                self.fetch_descriptors();
            }
        } else if self.qi.tail == self.qi.head && self.qi.last_type == TYPE_WAIT {
            // QEMU refuses to disable a queue that is not drained or whose last
            // descriptor was not a wait (GSTS.QIES stays set).
            self.regs.set_raw(IQH, 8, 0);
            self.qi.head = 0;
            self.qi.enabled = false;
            self.regs.update(GSTS, 4, u64::from(GCMD_QIE), 0);
        }
    }

    /// IQT_REG write: take the new tail and process up to it.
    pub(crate) fn handle_iqt(&mut self) {
        let v = self.regs.raw(IQT, 8);
        if self.qi.wide && v & (1 << 4) != 0 {
            // A 256-bit queue's tail must be 32-byte aligned; QEMU ignores the write.
            return;
        }
        self.qi.tail = if self.qi.wide {
            ((v >> 5) & 0x3fff) as u32
        } else {
            ((v >> 4) & 0x7fff) as u32
        };
        if self.qi.enabled && self.regs.raw(FSTS, 4) as u32 & FSTS_IQE == 0 {
            self.fetch_descriptors();
        }
    }

    fn queue_error(&mut self) {
        let pre = self.regs.raw(FSTS, 4) as u32;
        self.regs.update(FSTS, 4, 0, u64::from(FSTS_IQE));
        self.stats.queue_errors += 1;
        self.fault_event(pre);
    }

    fn fetch_descriptors(&mut self) {
        let shift = if self.qi.wide { 5 } else { 4 };
        if self.qi.tail >= self.qi.size {
            self.queue_error();
            return;
        }
        while self.qi.head != self.qi.tail {
            if !self.process_descriptor() {
                self.queue_error();
                break;
            }
            self.regs
                .set_raw(IQH, 8, (u64::from(self.qi.head) << shift) & 0x7fff0);
        }
    }

    /// Process the descriptor at the head; false if it is invalid (the head stays on it).
    fn process_descriptor(&mut self) -> bool {
        let bytes = if self.qi.wide { 32 } else { 16 };
        let at = self.qi.base + u64::from(self.qi.head) * bytes;
        let (Ok(lo), Ok(hi)) = (self.mem.read_u64(at), self.mem.read_u64(at + 8)) else {
            self.qi.last_type = 0;
            return false;
        };
        let kind = (lo & 0xf) as u8;
        self.qi.last_type = kind;
        let ok = match kind {
            TYPE_CONTEXT_CACHE => self.context_cache_descriptor(lo, hi),
            TYPE_IOTLB => self.iotlb_descriptor(lo, hi),
            TYPE_DEVICE_TLB => self.device_tlb_descriptor(lo, hi),
            TYPE_IEC => true,
            TYPE_WAIT => self.wait_descriptor(lo, hi),
            TYPE_PASID_IOTLB => {
                let did = ((lo >> 16) & 0xffff) as u16;
                let pasid = ((lo >> 32) & 0xf_ffff) as u32;
                match (lo >> 4) & 3 {
                    2 => self.caches.invalidate_iotlb_pasid(did, pasid, None),
                    3 => self.caches.invalidate_iotlb_pasid(
                        did,
                        pasid,
                        Some((hi & !0xfff, (hi & 0x3f) as u8)),
                    ),
                    _ => {}
                }
                true
            }
            TYPE_PASID_CACHE => {
                let did = ((lo >> 16) & 0xffff) as u16;
                let pasid = ((lo >> 32) & 0xf_ffff) as u32;
                self.caches.invalidate_pasid((lo >> 4) & 3, did, pasid);
                true
            }
            TYPE_PASID_DEVICE_TLB if self.caps.dt && self.caps.pasid => {
                let (address, size) = ats_range(hi, hi & (1 << 11) != 0);
                self.device_tlb.push(DeviceTlbInvalidation {
                    sid: ((lo >> 16) & 0xffff) as u16,
                    pasid: Some(((lo >> 32) & 0xf_ffff) as u32),
                    address,
                    size,
                });
                true
            }
            TYPE_PAGE_GROUP_RESPONSE if self.caps.prs => {
                // Page group response (§7.7.1): PP (4), RC [15:12], RID [31:16],
                // PASID [51:32]; PRGI in word 1 [11:3].
                self.page_responses.push(PageResponse {
                    rid: ((lo >> 16) & 0xffff) as u16,
                    pasid: (lo & (1 << 4) != 0).then_some(((lo >> 32) & 0xf_ffff) as u32),
                    group: ((hi >> 3) & 0x1ff) as u16,
                    code: ((lo >> 12) & 0xf) as u8,
                    from_hardware: false,
                });
                true
            }
            _ => false,
        };
        if !ok {
            return false;
        }
        self.stats.descriptors[kind as usize] += 1;
        self.qi.head = (self.qi.head + 1) % self.qi.size;
        true
    }

    fn context_cache_descriptor(&mut self, lo: u64, hi: u64) -> bool {
        if lo & CC_RSVD_LO != 0 || hi != 0 {
            return false;
        }
        match (lo >> 4) & 3 {
            // Domain-selective is performed as global (QEMU).
            1 | 2 => self.caches.invalidate_context_all(),
            3 => self
                .caches
                .invalidate_context_device(((lo >> 32) & 0xffff) as u16, ((lo >> 48) & 3) as u8),
            _ => return false,
        }
        true
    }

    fn iotlb_descriptor(&mut self, lo: u64, hi: u64) -> bool {
        if lo & IOTLB_RSVD_LO != 0 || hi & IOTLB_RSVD_HI != 0 {
            return false;
        }
        let did = ((lo >> 16) & 0xffff) as u16;
        match (lo >> 4) & 3 {
            1 => self.caches.invalidate_iotlb_all(),
            2 => self.caches.invalidate_iotlb_domain(did),
            3 => {
                let am = (hi & 0x3f) as u8;
                if am > self.caps.mamv {
                    return false;
                }
                self.caches.invalidate_iotlb_pages(did, hi & !0xfff, am);
            }
            _ => return false,
        }
        true
    }

    fn device_tlb_descriptor(&mut self, lo: u64, hi: u64) -> bool {
        if lo & DEVICE_TLB_RSVD_LO != 0 || hi & DEVICE_TLB_RSVD_HI != 0 {
            return false;
        }
        let (address, size) = ats_range(hi, hi & 1 != 0);
        self.device_tlb.push(DeviceTlbInvalidation {
            sid: ((lo >> 32) & 0xffff) as u16,
            pasid: None,
            address,
            size,
        });
        true
    }

    /// Invalidation wait (§6.5.2.8): every earlier descriptor has completed here, since
    /// the model processes them in order.
    fn wait_descriptor(&mut self, lo: u64, hi: u64) -> bool {
        if lo & WAIT_RSVD_LO != 0 || hi & WAIT_RSVD_HI != 0 {
            return false;
        }
        if lo & (WAIT_SW | WAIT_IF) == 0 {
            return false;
        }
        if lo & WAIT_SW != 0 && self.mem.write_u32(hi, (lo >> 32) as u32).is_err() {
            return false;
        }
        if lo & WAIT_IF != 0 {
            // Completion event (§6.5.2.8): only if no earlier one is pending.
            if self.regs.raw(ICS, 4) as u32 & ICS_IWC == 0 {
                self.regs.update(ICS, 4, 0, u64::from(ICS_IWC));
                self.regs.update(IECTL, 4, 0, u64::from(CTL_IP));
                let v = self.regs.raw(IECTL, 4) as u32;
                if v & CTL_IM == 0 {
                    self.regs.update(IECTL, 4, u64::from(CTL_IP), 0);
                    self.stats.completion_events += 1;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::ats_range;

    #[test]
    fn ats_size_encoding() {
        assert_eq!(ats_range(0x5000, false), (0x5000, 0x1000));
        assert_eq!(ats_range(0x4000, true), (0x4000, 0x2000));
        assert_eq!(ats_range(0x9000, true), (0x8000, 0x4000));
        assert_eq!(ats_range(0x7fff_ffff_ffff_f000, true).0, 0);
    }
}
