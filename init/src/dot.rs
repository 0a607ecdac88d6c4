//! The capability graph: a Graphviz DOT rendering of who holds what.
//!
//! Processes are boxes (coloured by role), kernel objects ellipses (endpoints) and
//! diamonds (notifications), devices and IOMMUs components and 3-D boxes, memory notes.
//! An edge from a process to an object is a capability, labelled with its name, badge
//! and rights; a dashed edge from a device to its IOMMU is the path its DMA takes; a
//! dotted edge from a process to an endpoint is where its end is reported.

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use crate::{CapKind, ObjectKind, Role, SystemDescription};

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn badge(b: u64) -> String {
    if b == 0 {
        String::new()
    } else {
        format!(" badge {b:#x}")
    }
}

/// The DOT source of `d`'s capability graph.
pub fn render(d: &SystemDescription) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_graph(&mut out, d);
    out
}

fn write_graph(o: &mut String, d: &SystemDescription) -> core::fmt::Result {
    writeln!(o, "digraph capabilities {{")?;
    writeln!(
        o,
        "  label={};",
        quote(&format!("capabilities: {}", d.name))
    )?;
    writeln!(o, "  labelloc=t; rankdir=LR; fontname=Helvetica;")?;
    writeln!(o, "  node [fontname=Helvetica, fontsize=11];")?;
    writeln!(o, "  edge [fontname=Helvetica, fontsize=9];")?;
    for p in &d.processes {
        let colour = match p.role {
            Role::Root => "#f4d6a0",
            Role::PasidServer | Role::IommuServer => "#b8d4f0",
            Role::Driver => "#c8e6c0",
        };
        writeln!(
            o,
            "  {} [shape=box, style=\"rounded,filled\", fillcolor={}, label={}];",
            quote(&format!("p:{}", p.name)),
            quote(colour),
            quote(&if p.program == p.name {
                format!("{}\n{}", p.name, p.role.name())
            } else {
                format!("{}\n{}\nprogram: {}", p.name, p.role.name(), p.program)
            })
        )?;
    }
    for ob in &d.objects {
        let shape = match ob.kind {
            ObjectKind::Endpoint => "ellipse",
            ObjectKind::Notification => "diamond",
        };
        writeln!(
            o,
            "  {} [shape={shape}, label={}];",
            quote(&format!("o:{}", ob.name)),
            quote(&format!("{}\n{:?}", ob.name, ob.kind).to_lowercase())
        )?;
    }
    for i in &d.iommus {
        writeln!(
            o,
            "  {} [shape=box3d, style=filled, fillcolor=\"#e0e0e0\", label={}];",
            quote(&format!("i:{}", i.name)),
            quote(&format!("{}\n{}", i.name, i.kind.name()))
        )?;
    }
    for dev in &d.devices {
        writeln!(
            o,
            "  {} [shape=component, label={}];",
            quote(&format!("d:{}", dev.name)),
            quote(&format!("{}\nstream {:#x}", dev.name, dev.stream))
        )?;
        writeln!(
            o,
            "  {} -> {} [style=dashed, label=\"DMA\"];",
            quote(&format!("d:{}", dev.name)),
            quote(&format!("i:{}", dev.iommu))
        )?;
    }
    for p in &d.processes {
        let from = quote(&format!("p:{}", p.name));
        for c in &p.caps {
            let (to, label) = match &c.kind {
                CapKind::Endpoint {
                    object,
                    badge: b,
                    rights,
                } => (
                    format!("o:{object}"),
                    format!("{}{} {rights}", c.name, badge(*b)),
                ),
                CapKind::DeviceEndpoint {
                    object,
                    badge: b,
                    device,
                } => (
                    format!("o:{object}"),
                    format!("{}{} WG (names {device})", c.name, badge(*b)),
                ),
                CapKind::Notification {
                    object,
                    badge: b,
                    rights,
                } => (
                    format!("o:{object}"),
                    format!("{}{} {rights}", c.name, badge(*b)),
                ),
                CapKind::Device { device } => (format!("d:{device}"), c.name.clone()),
                CapKind::Mmio { iommu } => (format!("i:{iommu}"), "registers".into()),
                CapKind::Irq { iommu } => (format!("i:{iommu}"), "interrupt".into()),
                CapKind::Memory { pages, contiguous } => {
                    let m = format!("m:{}:{}", p.name, c.name);
                    writeln!(
                        o,
                        "  {} [shape=note, label={}];",
                        quote(&m),
                        quote(&format!(
                            "{}\n{pages} pages{}",
                            c.name,
                            if *contiguous { ", contiguous" } else { "" }
                        ))
                    )?;
                    (m, String::from("memory"))
                }
            };
            writeln!(o, "  {from} -> {} [label={}];", quote(&to), quote(&label))?;
        }
        if let Some((ep, b)) = &p.fault_endpoint {
            writeln!(
                o,
                "  {from} -> {} [style=dotted, label={}];",
                quote(&format!("o:{ep}")),
                quote(&format!("fault handler{}", badge(*b)))
            )?;
        }
    }
    writeln!(o, "}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{default_system, IommuKind};

    #[test]
    fn every_capability_is_an_edge() {
        let d = default_system(IommuKind::Smmuv3);
        let dot = render(&d);
        assert!(dot.starts_with("digraph capabilities {"));
        assert!(dot.trim_end().ends_with('}'));
        let caps: usize = d.processes.iter().map(|p| p.caps.len()).sum();
        let faults = d
            .processes
            .iter()
            .filter(|p| p.fault_endpoint.is_some())
            .count();
        let edges = dot.matches(" -> ").count();
        assert_eq!(edges, caps + faults + d.devices.len());
        assert!(dot.contains(
            "\"p:driver-a\" -> \"o:iommu\" [label=\"iommu:dev-a badge 0x1a0 WG (names dev-a)\"];"
        ));
        assert!(dot.contains("\"p:iommu-server\" -> \"i:smmu0\" [label=\"registers\"];"));
        assert!(dot.contains("\"d:dev-b\" -> \"i:smmu0\" [style=dashed"));
    }

    #[test]
    fn labels_are_quoted() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
