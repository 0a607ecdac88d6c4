//! PCI configuration space through the legacy I/O ports (PCI Local Bus 3.0 §3.2.2.3.2:
//! CONFIG_ADDRESS 0xcf8, CONFIG_DATA 0xcfc) with init's I/O port capability, and the
//! enumeration of what firmware configured (bus numbers and BARs are left as SeaBIOS
//! assigned them).

use alloc::vec::Vec;

use sel4_rt::sys::{cap_type, Cap, Error};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Command register (offset 0x04) bits.
const COMMAND_MEMORY: u32 = 1 << 1;
const COMMAND_BUS_MASTER: u32 = 1 << 2;

/// A PCI function.
#[derive(Debug, Clone, Copy)]
pub struct Function {
    /// bus << 8 | device << 3 | function.
    pub bdf: u16,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// BAR0 as a memory address (0 for I/O BARs or none).
    pub bar0: u64,
    /// For bridges (header type 1): secondary and subordinate bus numbers.
    pub bridge: Option<(u8, u8)>,
}

/// Configuration access through the I/O ports.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    ports: Cap<cap_type::IoPort>,
}

impl Config {
    /// Access through `ports` (which must cover 0xcf8..0xd00).
    pub fn new(ports: Cap<cap_type::IoPort>) -> Self {
        Config { ports }
    }

    fn address(bdf: u16, offset: u16) -> u32 {
        0x8000_0000 | (u32::from(bdf) << 8) | u32::from(offset & 0xfc)
    }

    /// Reads the dword at `offset` (4-byte aligned) of `bdf`.
    pub fn read32(&self, bdf: u16, offset: u16) -> Result<u32, Error> {
        self.ports
            .out32(CONFIG_ADDRESS, Self::address(bdf, offset))?;
        self.ports.in32(CONFIG_DATA)
    }

    /// Writes the dword at `offset` of `bdf`.
    pub fn write32(&self, bdf: u16, offset: u16, value: u32) -> Result<(), Error> {
        self.ports
            .out32(CONFIG_ADDRESS, Self::address(bdf, offset))?;
        self.ports.out32(CONFIG_DATA, value)
    }

    /// Lets the function decode its memory BARs and master DMA.
    pub fn enable_dma(&self, bdf: u16) -> Result<(), Error> {
        let cmd = self.read32(bdf, 0x04)?;
        self.write32(
            bdf,
            0x04,
            (cmd & 0xffff) | COMMAND_MEMORY | COMMAND_BUS_MASTER,
        )
    }

    fn function(&self, bdf: u16) -> Result<Option<(Function, bool)>, Error> {
        let id = self.read32(bdf, 0x00)?;
        if id & 0xffff == 0xffff {
            return Ok(None);
        }
        let header = (self.read32(bdf, 0x0c)? >> 16) as u8;
        let multi = header & 0x80 != 0;
        let bridge = if header & 0x7f == 1 {
            let buses = self.read32(bdf, 0x18)?;
            Some(((buses >> 8) as u8, (buses >> 16) as u8))
        } else {
            None
        };
        let bar0 = if bridge.is_none() {
            let lo = self.read32(bdf, 0x10)?;
            if lo & 1 != 0 {
                0
            } else if (lo >> 1) & 3 == 2 {
                u64::from(lo & !0xf) | (u64::from(self.read32(bdf, 0x14)?) << 32)
            } else {
                u64::from(lo & !0xf)
            }
        } else {
            0
        };
        Ok(Some((
            Function {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                bar0,
                bridge,
            },
            multi,
        )))
    }

    /// Every function reachable from bus 0 through the bridges firmware configured.
    pub fn enumerate(&self) -> Result<Vec<Function>, Error> {
        let mut found = Vec::new();
        let mut buses = alloc::vec![0u8];
        let mut seen = [false; 256];
        while let Some(bus) = buses.pop() {
            if core::mem::replace(&mut seen[bus as usize], true) {
                continue;
            }
            for dev in 0..32u16 {
                let bdf0 = (u16::from(bus) << 8) | (dev << 3);
                let Some((f0, multi)) = self.function(bdf0)? else {
                    continue;
                };
                let mut functions = alloc::vec![f0];
                if multi {
                    for func in 1..8 {
                        if let Some((f, _)) = self.function(bdf0 | func)? {
                            functions.push(f);
                        }
                    }
                }
                for f in functions {
                    if let Some((secondary, _)) = f.bridge {
                        if secondary != 0 {
                            buses.push(secondary);
                        }
                    }
                    found.push(f);
                }
            }
        }
        found.sort_by_key(|f| f.bdf);
        Ok(found)
    }
}
