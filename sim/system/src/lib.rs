//! The IOMMU service on the deterministic simulation.
//!
//! [`System::build`] turns a [`SystemDescription`] into a simulated machine: simulated
//! RAM, an IOMMU hardware model per IOMMU of the description (with its register frame
//! and interrupt), the devices behind them, and init as the root task holding all of it.
//! init ([`init`]) executes the description: pasid-server and iommu-server run as
//! simulated processes ([`servers`]) and the drivers run the programs the test gives
//! ([`Programs`]), each reaching others only through the capabilities init handed out.
//! Drivers use [`client::Driver`]. iommu-server drives the IOMMU with the real driver
//! library (through `iommu-adapters`), which programs the model through the register
//! frame its capability maps and keeps its tables in memory its capability maps.
//!
//! The servers' configuration is derived from the description: iommu-server's clients
//! are the drivers holding its endpoint (client id = the driver's index in the
//! description, badge = that capability's badge), its device capabilities are the
//! drivers' device endpoints, its administrator is init's badge; pasid-server's callers
//! are iommu-server and (as administrator) init.

pub mod client;
pub mod hw;
pub mod init;
pub mod servers;

use std::collections::BTreeMap;
use std::sync::Arc;

use iommu_server::{ClientConfig, ClientQuota, Config, DeviceCap};
use pasid_server::CallerPolicy;
use sim::{Injection, RunReport, Sim, SimConfig};
use system_description::{CapKind, Role, SystemDescription};

pub use init::{InitEvent, InitLog, Programs};
pub use system_description::IommuKind;

/// What every client may hold at iommu-server.
pub const CLIENT_QUOTA: ClientQuota = ClientQuota {
    max_ioas: 8,
    max_mapped_bytes: 64 << 20,
    max_fault_queues: 4,
    max_pasids: 8,
};

/// Width of every IOAS's I/O virtual addresses (both models' tables cover it).
pub const IOVA_BITS: u8 = 39;

/// How to run a system.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub seed: u64,
    pub inject: Injection,
    /// Keep the full trace.
    pub trace: bool,
}

/// A simulated system built from a description.
pub struct System {
    pub sim: Sim,
    pub desc: SystemDescription,
    /// What init observed.
    pub log: InitLog,
    devices: BTreeMap<String, u32>,
}

/// The object named by the endpoint capability `cap` of the process with `role`.
fn endpoint_of(desc: &SystemDescription, role: Role, cap: &str) -> Option<String> {
    desc.with_role(role)
        .flat_map(|p| &p.caps)
        .find_map(|c| match &c.kind {
            CapKind::Endpoint { object, .. } if c.name == cap => Some(object.clone()),
            _ => None,
        })
}

/// iommu-server's and pasid-server's configuration for `desc`.
pub fn server_configs(
    desc: &SystemDescription,
) -> Result<(servers::IommuServerConfig, pasid_server::Config), String> {
    let iommu_ep =
        endpoint_of(desc, Role::IommuServer, "endpoint").ok_or("iommu-server has no `endpoint`")?;
    let pasid_ep =
        endpoint_of(desc, Role::PasidServer, "endpoint").ok_or("pasid-server has no `endpoint`")?;
    let kind = desc.iommus.first().ok_or("no IOMMU")?.kind;
    let mut clients = Vec::new();
    let mut devices = Vec::new();
    let mut admin = 0;
    let mut callers = Vec::new();
    let mut fault_notifications = BTreeMap::new();
    let server = desc
        .with_role(Role::IommuServer)
        .next()
        .ok_or("no iommu-server")?;
    for (index, p) in desc.processes.iter().enumerate() {
        let id = index as u32;
        for c in &p.caps {
            match &c.kind {
                CapKind::Endpoint { object, badge, .. } if *object == iommu_ep && *badge != 0 => {
                    match p.role {
                        Role::Root => admin = *badge,
                        Role::Driver => clients.push(ClientConfig {
                            id,
                            badge: *badge,
                            quota: CLIENT_QUOTA,
                        }),
                        _ => return Err(format!("`{}` may not call iommu-server", p.name)),
                    }
                }
                CapKind::DeviceEndpoint {
                    object,
                    badge,
                    device,
                } if *object == iommu_ep => {
                    let d = desc.device(device).ok_or("unknown device")?;
                    devices.push(DeviceCap {
                        badge: *badge,
                        client: id,
                        stream: d.stream,
                    });
                }
                CapKind::Endpoint { object, badge, .. } if *object == pasid_ep && *badge != 0 => {
                    callers.push(CallerPolicy {
                        badge: *badge,
                        max_live: if p.role == Role::IommuServer {
                            1 << 16
                        } else {
                            0
                        },
                        max_sets: if p.role == Role::IommuServer { 1024 } else { 0 },
                        admin: p.role == Role::Root,
                    });
                }
                _ => {}
            }
        }
        if p.role == Role::Driver {
            let name = format!("fault:{}", p.name);
            if server.caps.iter().any(|c| c.name == name) {
                fault_notifications.insert(id, name);
            }
        }
    }
    Ok((
        servers::IommuServerConfig {
            kind,
            core: Config {
                clients,
                devices,
                iova_bits: IOVA_BITS,
                max_fault_queue_depth: 256,
            },
            admin,
            pasids_per_client: CLIENT_QUOTA.max_pasids,
            fault_notifications,
        },
        pasid_server::Config {
            max_pasid: ipc_protocol::pasid::PASID_MAX,
            callers,
        },
    ))
}

impl System {
    /// Builds the machine of `desc` and starts init (nothing runs until [`System::run`]).
    pub fn build(
        desc: SystemDescription,
        programs: Programs,
        config: &RunConfig,
    ) -> Result<System, String> {
        desc.validate().map_err(|e| e.0)?;
        let (iommu, pasid) = server_configs(&desc)?;
        let sim = Sim::new(SimConfig {
            seed: config.seed,
            ram_bytes: desc.ram_bytes as usize,
            inject: config.inject.clone(),
            trace: config.trace,
            ..SimConfig::default()
        });
        let mut units = BTreeMap::new();
        for i in &desc.iommus {
            let u = sim.add_iommu(&i.name, hw::machine_unit(i.kind, sim.phys()));
            units.insert(i.name.clone(), u);
        }
        let mut devices = BTreeMap::new();
        for d in &desc.devices {
            let i = sim.add_device(&d.name, units[&d.iommu], d.stream, d.buffer_bytes);
            devices.insert(d.name.clone(), i);
        }
        let log = InitLog::default();
        sim.spawn_root(
            "init",
            init::program(desc.clone(), programs, iommu, pasid, log.clone()),
        );
        Ok(System {
            sim,
            desc,
            log,
            devices,
        })
    }

    /// Runs until nothing can run.
    pub fn run(&self) -> RunReport {
        self.sim.run()
    }

    /// The simulation's index of a device (as in [`sim::Note::Dma`]).
    pub fn device_index(&self, name: &str) -> Option<u32> {
        self.devices.get(name).copied()
    }

    /// What init observed so far.
    pub fn events(&self) -> Vec<InitEvent> {
        self.log.lock().unwrap().clone()
    }

    /// Simulated RAM.
    pub fn phys(&self) -> Arc<sim::PhysMem> {
        self.sim.phys()
    }
}
