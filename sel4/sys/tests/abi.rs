//! Host checks of the generated bindings against the kernel's own source files (found
//! where build.rs found them) and against values observed on the running kernel.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;

use sel4_sys_gen::*;

fn source(rel: &str) -> String {
    let path = PathBuf::from(env!("SEL4_SYS_GEN_SOURCE_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn autoconf() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(env!("SEL4_SYS_GEN_AUTOCONF")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

#[test]
fn message_info_packs_as_the_bitfield_spec_says() {
    // label in bits 12..32, capsUnwrapped 9..12, extraCaps 7..9, length 0..7.
    let info = MessageInfo::new(InvocationLabel::UntypedRetype as Word, 0, 1, 6);
    assert_eq!(info.0, (1 << 12) | (1 << 7) | 6);
    let info = MessageInfo::new(0xabcde, 0b101, 0b11, 0x7f);
    assert_eq!(
        (
            info.label(),
            info.caps_unwrapped(),
            info.extra_caps(),
            info.length()
        ),
        (0xabcde, 0b101, 0b11, 0x7f)
    );
    // Values wider than their field are truncated, never spill into the neighbour.
    let info = MessageInfo::new(0, 0, 0, 0x80);
    assert_eq!(info.0, 0);
    assert_eq!(MessageInfo::new(1 << 20, 0, 0, 0).label(), 0);
}

#[test]
fn message_limits() {
    assert_eq!(MSG_MAX_LENGTH, 120);
    assert_eq!(MSG_MAX_EXTRA_CAPS, 3);
    assert_eq!(
        constants::MSG_LENGTH_BITS as u32,
        bitfields::MessageInfo::LENGTH.bits
    );
    assert_eq!(
        constants::MSG_EXTRA_CAP_BITS as u32,
        bitfields::MessageInfo::EXTRA_CAPS.bits
    );
}

#[test]
fn errors_come_back_from_labels() {
    assert_eq!(MessageInfo::new(0, 0, 0, 0).error(), None);
    for e in [
        Error::InvalidArgument,
        Error::FailedLookup,
        Error::NotEnoughMemory,
    ] {
        assert_eq!(MessageInfo::new(e as Word, 0, 0, 0).error(), Some(e));
    }
    assert_eq!(NUM_ERRORS, Error::NotEnoughMemory as u64 + 1);
}

#[test]
fn rights_and_cap_data() {
    assert_eq!(CapRights::ALL.0, 0b111);
    assert_eq!(CapRights::READ_WRITE.0, 0b011);
    assert_eq!(CapRights::READ.0, 0b010);
    // A guard of 60 zero bits, as a 16-slot CNode used as a CSpace root needs.
    assert_eq!(cap_data::guard(0, 60), (1 << 31) | (60 << 2));
    assert_eq!(cap_data::badge(0x1234), 0x1234);
}

/// Method ids of an interface file in document order, with their `condition`.
fn xml_methods(rel: &str) -> Vec<(String, Option<String>)> {
    let text = source(rel);
    let mut out = Vec::new();
    for chunk in text.split("<method ").skip(1) {
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            chunk.find(&key).map(|i| {
                let rest = &chunk[i + key.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
        };
        out.push((attr("id").unwrap(), attr("condition")));
    }
    out
}

/// The two shapes of condition the interface files use.
fn holds(condition: &str, config: &BTreeMap<String, String>) -> bool {
    if let Some(name) = condition
        .strip_prefix("defined(")
        .and_then(|c| c.strip_suffix(')'))
    {
        return config.contains_key(name);
    }
    if let Some((name, value)) = condition
        .split_once(" > ")
        .or_else(|| condition.split_once(" &gt; "))
    {
        let have: i64 = config.get(name).map_or(0, |v| v.parse().unwrap());
        return have > value.parse::<i64>().unwrap();
    }
    panic!("unexpected condition {condition}");
}

#[test]
fn invocation_labels_follow_the_xml_order() {
    let config = autoconf();
    let mut expected = vec!["InvalidInvocation".to_string()];
    for file in [
        "libsel4/include/interfaces/sel4.xml",
        "libsel4/sel4_arch_include/x86_64/interfaces/sel4arch.xml",
        "libsel4/arch_include/x86/interfaces/sel4arch.xml",
    ] {
        for (id, condition) in xml_methods(file) {
            if condition.is_none_or(|c| holds(&c, &config)) {
                expected.push(id);
            }
        }
    }
    let generated: Vec<String> = INVOCATION_TABLE.iter().map(|m| m.0.to_string()).collect();
    assert_eq!(generated, expected);
    for (value, entry) in INVOCATION_TABLE.iter().enumerate() {
        assert_eq!(entry.3, value as u64, "{}", entry.0);
    }
    assert_eq!(N_ARCH_INVOCATION_LABELS, INVOCATION_TABLE.len() as u64);
}

#[test]
fn labels_match_the_running_kernel() {
    // Values the kernel built from sel4/config/autoconf.h accepted under QEMU.
    use InvocationLabel::*;
    let seen = [
        (UntypedRetype, 1),
        (TCBWriteRegisters, 3),
        (TCBConfigure, 5),
        (CNodeCopy, 17),
        (X86PDPTMap, 28),
        (X86PageDirectoryMap, 30),
        (X86PageTableMap, 33),
        (X86PageMap, 37),
        (X86ASIDPoolAssign, 43),
    ];
    for (label, value) in seen {
        assert_eq!(label as u64, value, "{label:?}");
    }
    assert_eq!(Syscall::Call as isize, -1);
    assert_eq!(Syscall::Send as isize, -3);
    assert_eq!(Syscall::Recv as isize, -5);
    assert_eq!(Syscall::DebugPutChar as isize, -9);
    use ObjectType::*;
    let seen = [
        (Untyped, 0),
        (TCB, 1),
        (Endpoint, 2),
        (CapTable, 4),
        (X86_PDPT, 5),
        (X64_PML4, 6),
        (X86_4K, 7),
        (X86_PageTable, 9),
        (X86_PageDirectory, 10),
    ];
    for (ty, value) in seen {
        assert_eq!(ty as u64, value, "{ty:?}");
    }
}

#[test]
fn syscalls_follow_the_xml_order() {
    let text = source("include/api/syscall.xml");
    let names: Vec<&str> = text
        .split("<syscall name=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    let position = |n: &str| -(names.iter().position(|x| *x == n).unwrap() as isize + 1);
    for (sys, name) in [
        (Syscall::Call, "Call"),
        (Syscall::ReplyRecv, "ReplyRecv"),
        (Syscall::Send, "Send"),
        (Syscall::NBSend, "NBSend"),
        (Syscall::Recv, "Recv"),
        (Syscall::Reply, "Reply"),
        (Syscall::Yield, "Yield"),
        (Syscall::NBRecv, "NBRecv"),
        (Syscall::DebugPutChar, "DebugPutChar"),
    ] {
        assert_eq!(sys as isize, position(name), "{name}");
    }
}

/// Fields of `typedef struct { ... } <attrs> name;` in a header: (C type, name, array
/// length expression).
fn c_struct(header: &str, name: &str) -> Vec<(String, String, Option<String>)> {
    let end = header
        .find(&format!(" {name};"))
        .unwrap_or_else(|| panic!("{name} not found"));
    let start = header[..end].rfind("typedef struct").unwrap();
    let body = &header[header[start..].find('{').unwrap() + start + 1..];
    let body = &body[..body.find('}').unwrap()];
    body.lines()
        .map(|l| l.split("/*").next().unwrap().trim())
        .filter_map(|l| l.strip_suffix(';'))
        .map(|decl| {
            let (ty, field) = decl.rsplit_once(char::is_whitespace).unwrap();
            let (field, len) = match field.split_once('[') {
                Some((f, l)) => (f, Some(l.trim_end_matches(']').to_string())),
                None => (field, None),
            };
            (ty.trim().to_string(), field.to_string(), len)
        })
        .collect()
}

/// C layout of a field list: packed structs have no padding; otherwise every field is a
/// word here. Returns (field, offset, size) and the struct size.
fn c_layout(
    fields: &[(String, String, Option<String>)],
    sizes: &BTreeMap<&str, usize>,
    config: &BTreeMap<String, String>,
) -> (Vec<(String, usize)>, usize) {
    let mut offset = 0;
    let mut out = Vec::new();
    for (ty, name, len) in fields {
        let size = *sizes
            .get(ty.as_str())
            .unwrap_or_else(|| panic!("size of {ty}"));
        let count = len.as_ref().map_or(1, |l| {
            l.parse()
                .unwrap_or_else(|_| config[l.as_str()].parse().unwrap())
        });
        out.push((name.clone(), offset));
        offset += size * count;
    }
    (out, offset)
}

macro_rules! rust_offsets {
    ($ty:ty { $($c:literal => $f:ident),* $(,)? }) => {
        vec![$(($c.to_string(), offset_of!($ty, $f))),*]
    };
}

#[test]
fn bootinfo_matches_the_header() {
    let header = source("libsel4/include/sel4/bootinfo_types.h");
    let config = autoconf();
    let mut sizes = BTreeMap::from([
        ("seL4_Word", 8),
        ("seL4_NodeId", 8),
        ("seL4_Domain", 8),
        ("seL4_SlotPos", 8),
        ("seL4_Uint8", 1),
        ("seL4_IPCBuffer*", 8),
    ]);

    let (c, size) = c_layout(&c_struct(&header, "seL4_SlotRegion"), &sizes, &config);
    assert_eq!(
        c,
        rust_offsets!(SlotRegion { "start" => start, "end" => end })
    );
    assert_eq!(size, size_of::<SlotRegion>());
    sizes.insert("seL4_SlotRegion", size);

    let (c, size) = c_layout(&c_struct(&header, "seL4_UntypedDesc"), &sizes, &config);
    let rust = rust_offsets!(UntypedDesc {
        "paddr" => paddr,
        "padding1" => padding1,
        "padding2" => padding2,
        "sizeBits" => size_bits,
        "isDevice" => is_device,
    });
    assert_eq!(c, rust);
    assert_eq!(size, size_of::<UntypedDesc>());
    sizes.insert("seL4_UntypedDesc", size);

    let (c, size) = c_layout(&c_struct(&header, "seL4_BootInfo"), &sizes, &config);
    let rust = rust_offsets!(BootInfo {
        "extraLen" => extra_len,
        "nodeID" => node_id,
        "numNodes" => num_nodes,
        "numIOPTLevels" => num_iopt_levels,
        "ipcBuffer" => ipc_buffer,
        "empty" => empty,
        "sharedFrames" => shared_frames,
        "userImageFrames" => user_image_frames,
        "userImagePaging" => user_image_paging,
        "ioSpaceCaps" => io_space_caps,
        "extraBIPages" => extra_bi_pages,
        "initThreadCNodeSizeBits" => init_thread_cnode_size_bits,
        "initThreadDomain" => init_thread_domain,
        "archInfo" => arch_info,
        "untyped" => untyped,
        "untypedList" => untyped_list,
    });
    assert_eq!(c, rust);
    assert_eq!(size, size_of::<BootInfo>());
    // The kernel puts bootinfo in one 4 KiB frame.
    assert!(size_of::<BootInfo>() <= 4096);
}

#[test]
fn ipc_buffer_matches_the_header() {
    let header = source("libsel4/include/sel4/shared_types.h");
    // `typedef struct seL4_IPCBuffer_ { ... } seL4_IPCBuffer __attribute__(...)`: every
    // field is a word or an array of words.
    let start = header.find("struct seL4_IPCBuffer_ {").unwrap();
    let body = &header[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    let mut offset = 0;
    let mut c = Vec::new();
    for decl in body.lines().filter_map(|l| l.trim().strip_suffix(';')) {
        let (_, field) = decl.rsplit_once(' ').unwrap();
        let (field, count) = match field.split_once('[') {
            Some((f, "seL4_MsgMaxLength]")) => (f, MSG_MAX_LENGTH),
            Some((f, "seL4_MsgMaxExtraCaps]")) => (f, MSG_MAX_EXTRA_CAPS),
            Some((_, other)) => panic!("unknown length {other}"),
            None => (field, 1),
        };
        c.push((field.to_string(), offset));
        offset += 8 * count;
    }
    let rust = rust_offsets!(IpcBuffer {
        "tag" => tag,
        "msg" => msg,
        "userData" => user_data,
        "caps_or_badges" => caps_or_badges,
        "receiveCNode" => receive_cnode,
        "receiveIndex" => receive_index,
        "receiveDepth" => receive_depth,
    });
    assert_eq!(c, rust);
    assert_eq!(offset, size_of::<IpcBuffer>());
    assert_eq!(std::mem::align_of::<IpcBuffer>(), size_of::<IpcBuffer>());
}

#[test]
fn initial_caps_are_the_kernel_slots() {
    assert_eq!(init::TCB.cptr(), 1);
    assert_eq!(init::CNODE.cptr(), 2);
    assert_eq!(init::VSPACE.cptr(), 3);
    assert_eq!(init::IO_PORT.cptr(), 7);
    assert_eq!(init_cap::NUM_INITIAL_CAPS, 12);
}

#[test]
fn untyped_descriptors() {
    let desc = UntypedDesc {
        paddr: 0xfed0_0000,
        padding1: 0,
        padding2: 0,
        size_bits: 20,
        is_device: 1,
    };
    assert!(desc.is_device());
    assert!(desc.contains(0xfed9_0000));
    assert!(!desc.contains(0xfee0_0000));
    assert!(!desc.contains(0xfecf_ffff));
}

/// Enumerators of every enum in preprocessed C text, in order, with their values.
fn c_enums(text: &str) -> BTreeMap<String, i64> {
    let mut values = BTreeMap::new();
    let mut rest = text;
    while let Some(keyword) = rest.find("enum ") {
        let open = rest[keyword..].find('{').unwrap() + keyword;
        let close = rest[open..].find('}').unwrap() + open;
        let mut next = 0;
        for item in rest[open + 1..close].split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => {
                    let v = v.trim();
                    let v = v.trim_start_matches('(').trim_end_matches(')');
                    (n.trim(), v.parse().unwrap_or_else(|_| values[v]))
                }
                None => (item, next),
            };
            values.insert(name.to_string(), value);
            next = value + 1;
        }
        rest = &rest[close + 1..];
    }
    values
}

/// The kernel's own generated headers (python generators, `make`), preprocessed with the
/// configuration, must give every label and syscall the value the bindings use. Runs when
/// `SEL4_BUILD_DIR` names a kernel build directory (`cargo xtask` sets it).
#[test]
fn kernel_generated_headers_agree() {
    let Some(build) = std::env::var_os("SEL4_BUILD_DIR").map(PathBuf::from) else {
        eprintln!("SEL4_BUILD_DIR unset: no kernel build to compare with");
        return;
    };
    let preprocess = |header: &str| {
        let out = std::process::Command::new("gcc")
            .args([
                "-E",
                "-P",
                "-x",
                "c",
                "-include",
                env!("SEL4_SYS_GEN_AUTOCONF"),
            ])
            .arg(format!("-I{}", build.display()))
            .arg(build.join(header))
            .output()
            .expect("gcc runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let labels = c_enums(&preprocess("arch/api/invocation.h"));
    for &(id, _, _, value) in INVOCATION_TABLE {
        assert_eq!(labels.get(id).copied(), Some(value as i64), "{id}");
    }
    assert_eq!(
        labels["nArchInvocationLabels"],
        N_ARCH_INVOCATION_LABELS as i64
    );
    assert_eq!(labels.len(), INVOCATION_TABLE.len() + 3);

    let syscalls = c_enums(&preprocess("arch/api/syscall.h"));
    for (sys, name) in [
        (Syscall::Call, "SysCall"),
        (Syscall::ReplyRecv, "SysReplyRecv"),
        (Syscall::Send, "SysSend"),
        (Syscall::NBSend, "SysNBSend"),
        (Syscall::Recv, "SysRecv"),
        (Syscall::Reply, "SysReply"),
        (Syscall::Yield, "SysYield"),
        (Syscall::NBRecv, "SysNBRecv"),
        (Syscall::DebugPutChar, "SysDebugPutChar"),
        (Syscall::DebugHalt, "SysDebugHalt"),
    ] {
        assert_eq!(syscalls[name], sys as i64, "{name}");
    }
}

#[test]
fn user_context_matches_the_header() {
    let header = source("libsel4/sel4_arch_include/x86_64/sel4/sel4_arch/types.h");
    let start = header.find("typedef struct seL4_UserContext_").unwrap();
    let body = &header[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    // `seL4_Word rip, rsp, ...;` lists, every one a word.
    let names: Vec<String> = body
        .split(';')
        .flat_map(|decl| {
            decl.trim()
                .trim_start_matches("seL4_Word")
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let ctx = UserContext {
        rip: 0,
        rsp: 1,
        rflags: 2,
        rax: 3,
        rbx: 4,
        rcx: 5,
        rdx: 6,
        rsi: 7,
        rdi: 8,
        rbp: 9,
        r8: 10,
        r9: 11,
        r10: 12,
        r11: 13,
        r12: 14,
        r13: 15,
        r14: 16,
        r15: 17,
        tls_base: 18,
    };
    assert_eq!(names.len(), UserContext::WORDS);
    assert_eq!(size_of::<UserContext>(), names.len() * 8);
    // The header's order is the message order: position i carries value i.
    let expected: Vec<Word> = (0..names.len() as Word).collect();
    assert_eq!(ctx.words().to_vec(), expected);
    assert_eq!(names[0], "rip");
    assert_eq!(names[1], "rsp");
    assert_eq!(names[8], "rdi");
    assert_eq!(names[18], "tls_base");
}

#[test]
fn vm_attributes_come_from_the_header() {
    let values = c_enums(&source("libsel4/arch_include/x86/sel4/arch/types.h"));
    assert_eq!(
        vm_attributes::WRITE_BACK,
        values["seL4_X86_WriteBack"] as Word
    );
    assert_eq!(
        vm_attributes::CACHE_DISABLED,
        values["seL4_X86_CacheDisabled"] as Word
    );
    assert_eq!(
        vm_attributes::UNCACHEABLE,
        values["seL4_X86_Uncacheable"] as Word
    );
    assert_ne!(vm_attributes::CACHE_DISABLED, vm_attributes::WRITE_BACK);
}
