//! What the tests share: simulated RAM, the model, the driver programming it, and a few
//! helpers that look at the tables the driver wrote.

use std::sync::Arc;

use iommu_models::smmuv3::{Config, Smmuv3};
use sim_physmem::{PhysMem, RangeAllocator, SimDma};
use smmuv3::event::Event;
use smmuv3::evtq::DrainReport;
use smmuv3::strtab::StreamTableFormat;
use smmuv3::{PollBudget, RegisterIo, Smmu, SmmuConfig, StreamTableChoice};

/// Start of simulated RAM (where QEMU's `virt` machine has it).
pub const RAM_BASE: u64 = 0x4000_0000;
/// RAM size.
pub const RAM_SIZE: u64 = 64 << 20;
/// The driver's tables and queues come from the first 16 MiB.
pub const DRIVER_WINDOW: u64 = 16 << 20;
/// Tables a test builds itself come from the next 16 MiB.
pub const TABLE_WINDOW: u64 = RAM_BASE + DRIVER_WINDOW;
/// DMA buffers come from the last 32 MiB.
pub const BUFFER_WINDOW: u64 = RAM_BASE + (32 << 20);
/// An address outside RAM.
pub const NOT_RAM: u64 = 0x1_0000_0000;

pub type Driver = Smmu<Smmuv3, SimDma, PollBudget>;

/// The driver's configuration in these tests: a linear table for 9-bit StreamIDs (as the
/// QEMU image has), 39-bit IOVAs (3-level tables), 128 event records.
pub fn smmu_config() -> SmmuConfig {
    SmmuConfig {
        cmdq_log2: 6,
        evtq_log2: 7,
        sid_bits: 9,
        strtab: StreamTableChoice::Fixed(StreamTableFormat::Linear),
        va_bits: 39,
        ..SmmuConfig::default()
    }
}

pub struct Rig {
    pub mem: Arc<PhysMem>,
    pub model: Smmuv3,
    pub smmu: Driver,
    pub bufs: RangeAllocator,
}

impl Rig {
    /// QEMU 7.2's SMMU with the driver configured by [`smmu_config`].
    pub fn new() -> Self {
        Self::with(Config::QEMU_7_2, smmu_config())
    }

    pub fn with(config: Config, smmu_config: SmmuConfig) -> Self {
        let mem = PhysMem::new(RAM_BASE, RAM_SIZE as usize);
        let model = Smmuv3::with_config(mem.clone(), config);
        let dma = SimDma::new(mem.clone(), RAM_BASE, DRIVER_WINDOW);
        let smmu = Smmu::new(model.clone(), dma, PollBudget::new(1000), smmu_config)
            .expect("the driver initialises the model");
        Rig {
            mem,
            model,
            smmu,
            bufs: RangeAllocator::new(BUFFER_WINDOW, 32 << 20),
        }
    }

    /// `len` bytes of DMA buffer aligned to `align`, filled with `fill`.
    pub fn buffer(&mut self, len: u64, align: u64, fill: u8) -> u64 {
        let pa = self.bufs.alloc(len, align).expect("buffer space");
        self.mem.write(pa, &vec![fill; len as usize]).unwrap();
        pa
    }

    /// A 4 KiB page filled with `fill`.
    pub fn page(&mut self, fill: u8) -> u64 {
        self.buffer(0x1000, 0x1000, fill)
    }

    /// Every pending event, decoded by the driver.
    pub fn events(&mut self) -> Vec<Event> {
        self.drain().0
    }

    pub fn drain(&mut self) -> (Vec<Event>, DrainReport) {
        let mut v = Vec::new();
        let r = self.smmu.drain_events(|e| v.push(e));
        (v, r)
    }

    /// Address of `sid`'s STE in the linear stream table.
    pub fn ste_addr(&mut self, sid: u32) -> u64 {
        let base = self.model.read64(smmuv3::regs::STRTAB_BASE) & smmuv3::regs::STRTAB_BASE_ADDR;
        base + u64::from(sid) * 64
    }

    /// Address of the CD `sid`'s STE points at.
    pub fn cd_addr(&mut self, sid: u32) -> u64 {
        let ste = self.ste_addr(sid);
        self.mem.read_u64(ste).unwrap() & smmuv3::ste::STRTAB_STE_0_S1CTXPTR
    }

    /// Address of the descriptor at `level` (1, 2 or 3) that translates `iova` for
    /// `sid`, found by walking the 3-level 4 KiB tables the driver wrote.
    pub fn desc_addr(&mut self, sid: u32, iova: u64, level: u32) -> u64 {
        let cd = self.cd_addr(sid);
        let ttb = self.mem.read_u64(cd + 8).unwrap() & smmuv3::cd::CTXDESC_CD_1_TTB0;
        let mut table = ttb;
        for l in 1..=3u32 {
            let shift = 12 + 9 * (3 - l);
            let at = table + ((iova >> shift) & 0x1ff) * 8;
            if l == level {
                return at;
            }
            let d = self.mem.read_u64(at).unwrap();
            assert_eq!(d & 3, 3, "level {l} entry for {iova:#x} is not a table");
            table = d & smmuv3::pagetable::PTE_ADDR;
        }
        unreachable!("levels are 1..=3")
    }

    pub fn read(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(pa, &mut v).unwrap();
        v
    }
}
