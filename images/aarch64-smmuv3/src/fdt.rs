//! A small, bounds-checked reader for flattened device trees (DTB, version
//! 17, backwards compatible to 16).
//!
//! Every read is checked against the blob: malformed input yields an
//! [`FdtError`], never a panic or an out-of-bounds access.

#![deny(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unreachable
)]

use core::fmt;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;
/// Deepest node nesting accepted.
const MAX_DEPTH: usize = 32;

/// What is wrong with a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// Shorter than its header or its `totalsize`.
    Truncated,
    /// The magic number is not 0xd00dfeed.
    BadMagic(u32),
    /// A version this reader does not understand.
    UnsupportedVersion(u32),
    /// A header field points outside the blob or is misaligned.
    BadHeader(&'static str),
    /// An unknown or misplaced token at a structure-block offset.
    BadToken {
        /// Offset in the structure block.
        offset: usize,
        /// The token.
        token: u32,
    },
    /// The structure block ends inside a token, name or property.
    UnexpectedEnd,
    /// A node or property name is not NUL-terminated inside the blob.
    BadName,
    /// Nodes nest deeper than this reader supports.
    TooDeep,
    /// A property value does not have the expected form.
    BadProperty(&'static str),
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "blob is truncated"),
            Self::BadMagic(m) => write!(f, "bad magic 0x{m:08x}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Self::BadHeader(what) => write!(f, "bad header field {what}"),
            Self::BadToken { offset, token } => {
                write!(f, "bad token 0x{token:x} at structure offset 0x{offset:x}")
            }
            Self::UnexpectedEnd => write!(f, "structure block ends unexpectedly"),
            Self::BadName => write!(f, "unterminated name"),
            Self::TooDeep => write!(f, "nodes nest deeper than {MAX_DEPTH}"),
            Self::BadProperty(what) => write!(f, "malformed property {what}"),
        }
    }
}

type Result<T> = core::result::Result<T, FdtError>;

fn be32_at(buf: &[u8], offset: usize) -> Result<u32> {
    let end = offset.checked_add(4).ok_or(FdtError::UnexpectedEnd)?;
    let bytes = buf.get(offset..end).ok_or(FdtError::UnexpectedEnd)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    Ok(u32::from_be_bytes(b))
}

fn be64_at(buf: &[u8], offset: usize) -> Result<u64> {
    let hi = be32_at(buf, offset)?;
    let lo = be32_at(buf, offset.checked_add(4).ok_or(FdtError::UnexpectedEnd)?)?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// The bytes of a NUL-terminated string starting at `offset` (without NUL).
fn cstr_at(buf: &[u8], offset: usize) -> Result<&[u8]> {
    let rest = buf.get(offset..).ok_or(FdtError::BadName)?;
    let len = rest.iter().position(|&b| b == 0).ok_or(FdtError::BadName)?;
    rest.get(..len).ok_or(FdtError::BadName)
}

fn align4(v: usize) -> Result<usize> {
    v.checked_next_multiple_of(4).ok_or(FdtError::UnexpectedEnd)
}

/// Reads `cells` (0..=2) big-endian cells from `buf` at `*pos` into a u64,
/// advancing `*pos`.
fn read_cells(buf: &[u8], pos: &mut usize, cells: u32) -> Result<u64> {
    if cells > 2 {
        return Err(FdtError::BadProperty("more than 2 address/size cells"));
    }
    let mut v = 0u64;
    for _ in 0..cells {
        v = (v << 32) | u64::from(be32_at(buf, *pos)?);
        *pos = pos.checked_add(4).ok_or(FdtError::UnexpectedEnd)?;
    }
    Ok(v)
}

/// A validated device tree blob.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
    rsvmap_offset: usize,
}

impl<'a> Fdt<'a> {
    /// The `totalsize` header field of the blob starting at `data`, after
    /// checking the magic number (needs the first 8 bytes only).
    pub fn total_size(data: &[u8]) -> Result<usize> {
        let magic = be32_at(data, 0).map_err(|_| FdtError::Truncated)?;
        if magic != FDT_MAGIC {
            return Err(FdtError::BadMagic(magic));
        }
        let size = be32_at(data, 4).map_err(|_| FdtError::Truncated)?;
        usize::try_from(size).map_err(|_| FdtError::BadHeader("totalsize"))
    }

    /// Validates the header of the blob at the start of `data` (which may be
    /// longer than the blob).
    pub fn new(data: &'a [u8]) -> Result<Self> {
        let total = Self::total_size(data)?;
        if total < HEADER_SIZE {
            return Err(FdtError::BadHeader("totalsize"));
        }
        let blob = data.get(..total).ok_or(FdtError::Truncated)?;
        let field = |index: usize| -> Result<usize> {
            let v = be32_at(blob, index * 4).map_err(|_| FdtError::Truncated)?;
            usize::try_from(v).map_err(|_| FdtError::BadHeader("field"))
        };
        let off_dt_struct = field(2)?;
        let off_dt_strings = field(3)?;
        let off_mem_rsvmap = field(4)?;
        let version = field(5)?;
        let last_comp_version = field(6)?;
        let size_dt_strings = field(8)?;
        let size_dt_struct = field(9)?;
        if version < 16 || last_comp_version > 17 {
            return Err(FdtError::UnsupportedVersion(
                u32::try_from(version).unwrap_or(u32::MAX),
            ));
        }
        let region = |off: usize, size: usize, what: &'static str| -> Result<&'a [u8]> {
            let end = off.checked_add(size).ok_or(FdtError::BadHeader(what))?;
            blob.get(off..end).ok_or(FdtError::BadHeader(what))
        };
        if off_dt_struct % 4 != 0 {
            return Err(FdtError::BadHeader("off_dt_struct"));
        }
        if off_mem_rsvmap % 8 != 0 || off_mem_rsvmap < HEADER_SIZE || off_mem_rsvmap >= total {
            return Err(FdtError::BadHeader("off_mem_rsvmap"));
        }
        let structs = region(off_dt_struct, size_dt_struct, "structure block")?;
        let strings = region(off_dt_strings, size_dt_strings, "strings block")?;
        Ok(Self {
            blob,
            structs,
            strings,
            rsvmap_offset: off_mem_rsvmap,
        })
    }

    /// The blob (its `totalsize` bytes).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// Visits the memory reservation block's entries (address, size).
    pub fn for_each_reservation(&self, mut f: impl FnMut(u64, u64)) -> Result<()> {
        let mut pos = self.rsvmap_offset;
        loop {
            let addr = be64_at(self.blob, pos)
                .map_err(|_| FdtError::BadHeader("memory reservation block"))?;
            let size = be64_at(self.blob, pos.saturating_add(8))
                .map_err(|_| FdtError::BadHeader("memory reservation block"))?;
            if addr == 0 && size == 0 {
                return Ok(());
            }
            f(addr, size);
            pos = pos
                .checked_add(16)
                .ok_or(FdtError::BadHeader("memory reservation block"))?;
        }
    }

    /// Iterates over all nodes in document order.
    pub fn nodes(&self) -> NodeIter<'a> {
        NodeIter {
            fdt: *self,
            pos: 0,
            depth: 0,
            stack: [Level::ROOT_PARENT; MAX_DEPTH + 1],
            root_seen: false,
            done: false,
        }
    }

    /// The root node.
    pub fn root(&self) -> Result<Node<'a>> {
        self.nodes().next_node()?.ok_or(FdtError::UnexpectedEnd)
    }

    /// The node at the absolute `path` (e.g. `/chosen` or `/pl011@9000000`).
    /// A component without a unit address also matches a node with one.
    pub fn find_path(&self, path: &str) -> Result<Option<Node<'a>>> {
        let mut it = self.nodes();
        while let Some(node) = it.next_node()? {
            if it.current_path_matches(path.as_bytes()) {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// The node whose `phandle` is `phandle`.
    pub fn find_phandle(&self, phandle: u32) -> Result<Option<Node<'a>>> {
        let mut it = self.nodes();
        while let Some(node) = it.next_node()? {
            if node.phandle()? == Some(phandle) {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// Visits every enabled node compatible with `compatible`.
    pub fn for_each_compatible(
        &self,
        compatible: &str,
        mut f: impl FnMut(Node<'a>) -> Result<()>,
    ) -> Result<()> {
        let mut it = self.nodes();
        while let Some(node) = it.next_node()? {
            if node.is_compatible(compatible)? && node.is_enabled()? {
                f(node)?;
            }
        }
        Ok(())
    }

    /// The first enabled node compatible with `compatible`.
    pub fn find_compatible(&self, compatible: &str) -> Result<Option<Node<'a>>> {
        let mut it = self.nodes();
        while let Some(node) = it.next_node()? {
            if node.is_compatible(compatible)? && node.is_enabled()? {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// Resolves `name` in `/aliases` to a path.
    pub fn alias(&self, name: &str) -> Result<Option<&'a str>> {
        let Some(aliases) = self.find_path("/aliases")? else {
            return Ok(None);
        };
        match aliases.property(name)? {
            Some(p) => p.as_str().map(Some),
            None => Ok(None),
        }
    }

    fn string_at(&self, offset: u32) -> Result<&'a [u8]> {
        let offset = usize::try_from(offset).map_err(|_| FdtError::BadName)?;
        cstr_at(self.strings, offset)
    }

    fn token(&self, pos: usize) -> Result<u32> {
        be32_at(self.structs, pos)
    }
}

#[derive(Clone, Copy)]
struct Level<'a> {
    name: &'a [u8],
    address_cells: u32,
    size_cells: u32,
    interrupt_parent: Option<u32>,
}

impl Level<'_> {
    /// What the root node's "parent" provides: the defaults from the
    /// devicetree specification.
    const ROOT_PARENT: Level<'static> = Level {
        name: b"",
        address_cells: 2,
        size_cells: 1,
        interrupt_parent: None,
    };
}

/// One property.
#[derive(Clone, Copy)]
pub struct Property<'a> {
    /// Name.
    pub name: &'a [u8],
    /// Raw value.
    pub value: &'a [u8],
}

impl<'a> Property<'a> {
    /// The value as one u32 cell.
    pub fn as_u32(&self) -> Result<u32> {
        if self.value.len() != 4 {
            return Err(FdtError::BadProperty("expected one cell"));
        }
        be32_at(self.value, 0)
    }

    /// The value as a NUL-terminated UTF-8 string.
    pub fn as_str(&self) -> Result<&'a str> {
        let (last, body) = self
            .value
            .split_last()
            .ok_or(FdtError::BadProperty("empty string"))?;
        if *last != 0 {
            return Err(FdtError::BadProperty("string not NUL-terminated"));
        }
        core::str::from_utf8(body).map_err(|_| FdtError::BadProperty("string not UTF-8"))
    }

    /// The value as a list of strings (like `compatible`).
    pub fn strings(&self) -> impl Iterator<Item = &'a [u8]> {
        let v = self.value.strip_suffix(&[0]).unwrap_or(self.value);
        v.split(|&b| b == 0).filter(|s| !s.is_empty())
    }

    /// The value as big-endian u32 cells; an error if the length is not a
    /// multiple of 4.
    pub fn cells(&self) -> Result<Cells<'a>> {
        if self.value.len() % 4 != 0 {
            return Err(FdtError::BadProperty("length not a multiple of 4"));
        }
        Ok(Cells {
            value: self.value,
            pos: 0,
        })
    }
}

/// Cursor over a property's u32 cells.
pub struct Cells<'a> {
    value: &'a [u8],
    pos: usize,
}

impl Cells<'_> {
    /// Whether all cells were read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.value.len()
    }

    /// Reads one cell.
    pub fn next_u32(&mut self) -> Result<u32> {
        let v =
            be32_at(self.value, self.pos).map_err(|_| FdtError::BadProperty("too few cells"))?;
        self.pos = self.pos.saturating_add(4);
        Ok(v)
    }

    /// Reads a value made of `cells` (0..=2) cells.
    pub fn next_value(&mut self, cells: u32) -> Result<u64> {
        read_cells(self.value, &mut self.pos, cells).map_err(|e| match e {
            FdtError::UnexpectedEnd => FdtError::BadProperty("too few cells"),
            other => other,
        })
    }
}

/// A node, with the cell sizes and interrupt parent it inherits.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    fdt: Fdt<'a>,
    name: &'a [u8],
    /// Structure-block offset of the node's first property token.
    props_offset: usize,
    parent_address_cells: u32,
    parent_size_cells: u32,
    address_cells: u32,
    size_cells: u32,
    interrupt_parent: Option<u32>,
}

impl<'a> Node<'a> {
    /// Name including unit address (`pl011@9000000`); empty for the root.
    pub fn name(&self) -> &'a str {
        core::str::from_utf8(self.name).unwrap_or("<non-UTF-8 name>")
    }

    /// `#address-cells` of the parent (the cells of this node's `reg`).
    pub fn parent_address_cells(&self) -> u32 {
        self.parent_address_cells
    }

    /// `#size-cells` of the parent.
    pub fn parent_size_cells(&self) -> u32 {
        self.parent_size_cells
    }

    /// This node's `#address-cells` (for its children), default 2.
    pub fn address_cells(&self) -> u32 {
        self.address_cells
    }

    /// This node's `#size-cells` (for its children), default 1.
    pub fn size_cells(&self) -> u32 {
        self.size_cells
    }

    /// The `interrupt-parent` phandle, inherited from ancestors.
    pub fn interrupt_parent(&self) -> Option<u32> {
        self.interrupt_parent
    }

    /// Visits the node's properties.
    pub fn for_each_property(&self, mut f: impl FnMut(Property<'a>) -> Result<()>) -> Result<()> {
        let mut pos = self.props_offset;
        loop {
            match read_property(&self.fdt, pos)? {
                PropStep::Prop(p, next) => {
                    f(p)?;
                    pos = next;
                }
                PropStep::Nop(next) => pos = next,
                PropStep::End => return Ok(()),
            }
        }
    }

    /// The property called `name`.
    pub fn property(&self, name: &str) -> Result<Option<Property<'a>>> {
        let mut found = None;
        self.for_each_property(|p| {
            if found.is_none() && p.name == name.as_bytes() {
                found = Some(p);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Whether the node has a property called `name`.
    pub fn has_property(&self, name: &str) -> Result<bool> {
        Ok(self.property(name)?.is_some())
    }

    /// The node's `phandle` (or legacy `linux,phandle`).
    pub fn phandle(&self) -> Result<Option<u32>> {
        match self.property("phandle")? {
            Some(p) => p.as_u32().map(Some),
            None => match self.property("linux,phandle")? {
                Some(p) => p.as_u32().map(Some),
                None => Ok(None),
            },
        }
    }

    /// Whether `compatible` lists `compatible`.
    pub fn is_compatible(&self, compatible: &str) -> Result<bool> {
        Ok(self
            .property("compatible")?
            .is_some_and(|p| p.strings().any(|s| s == compatible.as_bytes())))
    }

    /// Whether `status` is absent, "okay" or "ok".
    pub fn is_enabled(&self) -> Result<bool> {
        match self.property("status")? {
            None => Ok(true),
            Some(p) => Ok(matches!(p.strings().next(), Some(b"okay") | Some(b"ok"))),
        }
    }

    /// The `n`th (address, size) pair of `reg`, decoded with the parent's
    /// cell sizes.
    pub fn reg(&self, n: usize) -> Result<Option<(u64, u64)>> {
        let Some(p) = self.property("reg")? else {
            return Ok(None);
        };
        let ac = self.parent_address_cells;
        let sc = self.parent_size_cells;
        let entry_cells = ac.checked_add(sc).ok_or(FdtError::BadProperty("reg"))?;
        let entry_bytes = usize::try_from(entry_cells)
            .ok()
            .and_then(|c| c.checked_mul(4))
            .ok_or(FdtError::BadProperty("reg"))?;
        if entry_bytes == 0 || p.value.len() % entry_bytes != 0 {
            return Err(FdtError::BadProperty("reg length"));
        }
        let Some(mut pos) = n.checked_mul(entry_bytes) else {
            return Ok(None);
        };
        if pos >= p.value.len() {
            return Ok(None);
        }
        let addr = read_cells(p.value, &mut pos, ac)?;
        let size = read_cells(p.value, &mut pos, sc)?;
        Ok(Some((addr, size)))
    }
}

enum PropStep<'a> {
    Prop(Property<'a>, usize),
    Nop(usize),
    End,
}

/// Reads the property token at `pos` (or reports the end of the node's
/// properties when a node token follows).
fn read_property<'a>(fdt: &Fdt<'a>, pos: usize) -> Result<PropStep<'a>> {
    let token = fdt.token(pos)?;
    match token {
        FDT_PROP => {
            let len = be32_at(
                fdt.structs,
                pos.checked_add(4).ok_or(FdtError::UnexpectedEnd)?,
            )?;
            let nameoff = be32_at(
                fdt.structs,
                pos.checked_add(8).ok_or(FdtError::UnexpectedEnd)?,
            )?;
            let len = usize::try_from(len).map_err(|_| FdtError::UnexpectedEnd)?;
            let start = pos.checked_add(12).ok_or(FdtError::UnexpectedEnd)?;
            let end = start.checked_add(len).ok_or(FdtError::UnexpectedEnd)?;
            let value = fdt.structs.get(start..end).ok_or(FdtError::UnexpectedEnd)?;
            let name = fdt.string_at(nameoff)?;
            Ok(PropStep::Prop(Property { name, value }, align4(end)?))
        }
        FDT_NOP => Ok(PropStep::Nop(
            pos.checked_add(4).ok_or(FdtError::UnexpectedEnd)?,
        )),
        FDT_BEGIN_NODE | FDT_END_NODE | FDT_END => Ok(PropStep::End),
        token => Err(FdtError::BadToken { offset: pos, token }),
    }
}

/// Depth-first iterator over a blob's nodes.
pub struct NodeIter<'a> {
    fdt: Fdt<'a>,
    pos: usize,
    /// Depth of the most recently returned node (root = 1); stack[0] holds
    /// the defaults the root inherits.
    depth: usize,
    stack: [Level<'a>; MAX_DEPTH + 1],
    root_seen: bool,
    done: bool,
}

impl<'a> NodeIter<'a> {
    /// The next node, `Ok(None)` at the end of the tree.
    pub fn next_node(&mut self) -> Result<Option<Node<'a>>> {
        if self.done {
            return Ok(None);
        }
        let result = self.advance();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    fn advance(&mut self) -> Result<Option<Node<'a>>> {
        loop {
            let pos = self.pos;
            let token = self.fdt.token(pos)?;
            match token {
                FDT_BEGIN_NODE => return self.begin_node(pos).map(Some),
                FDT_END_NODE => {
                    if self.depth == 0 {
                        return Err(FdtError::BadToken { offset: pos, token });
                    }
                    self.depth -= 1;
                    self.pos = pos.checked_add(4).ok_or(FdtError::UnexpectedEnd)?;
                }
                FDT_PROP | FDT_NOP => match read_property(&self.fdt, pos)? {
                    PropStep::Prop(_, next) | PropStep::Nop(next) => self.pos = next,
                    PropStep::End => return Err(FdtError::BadToken { offset: pos, token }),
                },
                FDT_END => {
                    if self.depth != 0 {
                        return Err(FdtError::UnexpectedEnd);
                    }
                    return Ok(None);
                }
                token => return Err(FdtError::BadToken { offset: pos, token }),
            }
        }
    }

    fn begin_node(&mut self, pos: usize) -> Result<Node<'a>> {
        // Only one root node.
        if self.depth == 0 {
            if self.root_seen {
                return Err(FdtError::BadToken {
                    offset: pos,
                    token: FDT_BEGIN_NODE,
                });
            }
            self.root_seen = true;
        }
        let name_start = pos.checked_add(4).ok_or(FdtError::UnexpectedEnd)?;
        let name = cstr_at(self.fdt.structs, name_start)?;
        let props_offset = align4(name_start.saturating_add(name.len()).saturating_add(1))?;
        let parent = *self.stack.get(self.depth).ok_or(FdtError::TooDeep)?;
        let mut node = Node {
            fdt: self.fdt,
            name,
            props_offset,
            parent_address_cells: parent.address_cells,
            parent_size_cells: parent.size_cells,
            address_cells: 2,
            size_cells: 1,
            interrupt_parent: parent.interrupt_parent,
        };
        let (mut address_cells, mut size_cells, mut interrupt_parent) =
            (2, 1, parent.interrupt_parent);
        node.for_each_property(|p| {
            match p.name {
                b"#address-cells" => address_cells = p.as_u32()?,
                b"#size-cells" => size_cells = p.as_u32()?,
                b"interrupt-parent" => interrupt_parent = Some(p.as_u32()?),
                _ => {}
            }
            Ok(())
        })?;
        node.address_cells = address_cells;
        node.size_cells = size_cells;
        node.interrupt_parent = interrupt_parent;
        let depth = self.depth.checked_add(1).ok_or(FdtError::TooDeep)?;
        let slot = self.stack.get_mut(depth).ok_or(FdtError::TooDeep)?;
        *slot = Level {
            name,
            address_cells: node.address_cells,
            size_cells: node.size_cells,
            interrupt_parent: node.interrupt_parent,
        };
        self.depth = depth;
        self.pos = props_offset;
        Ok(node)
    }

    /// Whether the node last returned is at `path` (absolute, `/`-separated).
    /// A path component without `@unit` matches a name with one.
    pub fn current_path_matches(&self, path: &[u8]) -> bool {
        let Some(rest) = path.strip_prefix(b"/") else {
            return false;
        };
        let mut components = rest.split(|&b| b == b'/').filter(|c| !c.is_empty());
        // stack[1] is the root; stack[2..=depth] are the path components.
        for level in self.stack.iter().take(self.depth + 1).skip(2) {
            let Some(component) = components.next() else {
                return false;
            };
            let name = level.name;
            let base = name.split(|&b| b == b'@').next().unwrap_or(name);
            if component != name && component != base {
                return false;
            }
        }
        self.depth >= 1 && components.next().is_none()
    }
}
