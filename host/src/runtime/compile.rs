//! Compiling task modules within bounds, and the node's byte-bounded cache of compiled modules.
//!
//! Cranelift's time and memory grow with the number of functions, the size of each body and
//! how deeply its blocks nest; a 5 MB module of a million tiny functions took 22–58 s and
//! 5.4 GiB to compile. Compilation cannot be interrupted, so a module is measured first, in
//! one linear pass of the parser wasmtime itself uses, and one over any bound is refused as
//! BadModule naming the bound. Within the bounds the worst case is a few seconds (measured in
//! `SECURITY.md`), and that time runs on the task's own slot thread (no parallel compilation),
//! so it counts against the task's wall time and CPU budget like everything else it causes.

use std::{collections::HashMap, sync::Arc};

use wasmparser::{Operator, Parser, Payload};

use super::limits::{MIB, fmt_bytes};
use crate::store::Cid;

/// The largest module the node compiles.
pub const MAX_MODULE_LEN: u64 = 16 * MIB;
/// The most functions a module may define.
pub const MAX_FUNCTIONS: u32 = 10_000;
/// The most bytes of code in all function bodies together.
pub const MAX_CODE_BYTES: usize = 2 << 20;
/// The largest single function body, in bytes.
pub const MAX_BODY_BYTES: usize = 256 << 10;
/// The deepest nesting of blocks, loops and ifs in one function.
pub const MAX_NESTING: u32 = 256;
/// The most locals one function may declare.
pub const MAX_LOCALS: u32 = 10_000;
/// The most entries in each of the type, import, export, global, table, element and data
/// sections: wasmtime does work per entry (a trampoline compiled per distinct function type,
/// an initialiser per segment) that the function bounds alone do not cover.
pub const MAX_SECTION_ENTRIES: u32 = 10_000;
/// Compiled code the node keeps cached, in bytes: a module is evicted, least recently used
/// first, before the cache grows past this.
pub const MODULE_CACHE_BYTES: usize = 256 << 20;

/// Checks `bytes` against the compile bounds without compiling anything.
///
/// # Errors
/// A message naming the first bound exceeded, or the parser's error for malformed bytes.
pub(crate) fn check_bounds(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 > MAX_MODULE_LEN {
        return Err(format!(
            "module is {} bytes, over the {} module size limit",
            bytes.len(),
            fmt_bytes(MAX_MODULE_LEN)
        ));
    }
    let malformed = |e: wasmparser::BinaryReaderError| format!("not a valid wasm module: {e}");
    let (mut functions, mut code) = (0u32, 0usize);
    for payload in Parser::new(0).parse_all(bytes) {
        let (section, entries) = match payload.map_err(malformed)? {
            Payload::CodeSectionEntry(body) => {
                check_body(&body, &mut functions, &mut code)?;
                continue;
            }
            Payload::TypeSection(r) => ("type", r.count()),
            Payload::ImportSection(r) => ("import", r.count()),
            Payload::ExportSection(r) => ("export", r.count()),
            Payload::GlobalSection(r) => ("global", r.count()),
            Payload::TableSection(r) => ("table", r.count()),
            Payload::ElementSection(r) => ("element", r.count()),
            Payload::DataSection(r) => ("data", r.count()),
            _ => continue,
        };
        if entries > MAX_SECTION_ENTRIES {
            return Err(format!(
                "module's {section} section has {entries} entries, over the {MAX_SECTION_ENTRIES} compile limit"
            ));
        }
    }
    Ok(())
}

/// Checks one function body against the per-function bounds, and the module's running
/// function count and code bytes against theirs.
fn check_body(
    body: &wasmparser::FunctionBody<'_>,
    functions: &mut u32,
    code: &mut usize,
) -> Result<(), String> {
    let malformed = |e: wasmparser::BinaryReaderError| format!("not a valid wasm module: {e}");
    *functions += 1;
    let function = *functions;
    if function > MAX_FUNCTIONS {
        return Err(format!(
            "module defines more than {MAX_FUNCTIONS} functions, the compile limit"
        ));
    }
    let len = body.range().len();
    *code += len;
    if len > MAX_BODY_BYTES {
        return Err(format!(
            "function {function} has a {} body, over the {} per-function compile limit",
            fmt_bytes(len as u64),
            fmt_bytes(MAX_BODY_BYTES as u64)
        ));
    }
    if *code > MAX_CODE_BYTES {
        return Err(format!(
            "module has over {} of code, the compile limit",
            fmt_bytes(MAX_CODE_BYTES as u64)
        ));
    }
    let mut locals = 0u32;
    for group in body.get_locals_reader().map_err(malformed)? {
        locals = locals.saturating_add(group.map_err(malformed)?.0);
    }
    if locals > MAX_LOCALS {
        return Err(format!(
            "function {function} declares {locals} locals, over the {MAX_LOCALS} compile limit"
        ));
    }
    let (mut depth, mut ops) = (0u32, body.get_operators_reader().map_err(malformed)?);
    while !ops.eof() {
        match ops.read().map_err(malformed)? {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. } => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "function {function} nests blocks deeper than {MAX_NESTING}, the compile limit"
                    ));
                }
            }
            Operator::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Compiled modules by CID, bounded in entries' code bytes, evicting the least recently used.
pub(crate) struct ModuleCache<T> {
    entries: HashMap<Cid, (Arc<T>, usize, u64)>,
    bytes: usize,
    clock: u64,
}

impl<T> Default for ModuleCache<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
        }
    }
}

impl<T> ModuleCache<T> {
    pub(crate) fn get(&mut self, cid: &Cid) -> Option<Arc<T>> {
        self.clock += 1;
        let entry = self.entries.get_mut(cid)?;
        entry.2 = self.clock;
        Some(entry.0.clone())
    }

    /// Keeps `module`, of `bytes` compiled bytes, evicting the least recently used modules
    /// to make room. A module larger than the whole cache is not kept.
    pub(crate) fn insert(&mut self, cid: Cid, module: Arc<T>, bytes: usize) {
        if bytes > MODULE_CACHE_BYTES {
            return;
        }
        if let Some((_, old, _)) = self.entries.remove(&cid) {
            self.bytes -= old;
        }
        while self.bytes + bytes > MODULE_CACHE_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(cid, _)| *cid)
            else {
                break;
            };
            if let Some((_, freed, _)) = self.entries.remove(&oldest) {
                self.bytes -= freed;
            }
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(cid, (module, bytes, self.clock));
    }

    /// Compiled bytes held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> Cid {
        Cid([n; 32])
    }

    #[test]
    fn the_cache_stays_under_its_byte_bound_evicting_the_least_recent() {
        let mut cache = ModuleCache::default();
        let third = MODULE_CACHE_BYTES / 3;
        for n in 0..3 {
            cache.insert(cid(n), Arc::new(n), third);
        }
        assert!(cache.get(&cid(0)).is_some(), "touch 0: now 1 is the oldest");
        cache.insert(cid(3), Arc::new(3), third);
        assert!(cache.bytes() <= MODULE_CACHE_BYTES);
        assert!(cache.get(&cid(1)).is_none(), "the least recently used went");
        for n in [0, 2, 3] {
            assert!(cache.get(&cid(n)).is_some(), "module {n} kept");
        }
        cache.insert(cid(9), Arc::new(9), MODULE_CACHE_BYTES + 1);
        assert!(
            cache.get(&cid(9)).is_none(),
            "one module over the bound is not kept"
        );
    }

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("wat")
    }

    #[test]
    fn every_shipped_task_fits_the_bounds() {
        for (name, path) in shoal_task_artifacts::ALL {
            let bytes = std::fs::read(path).expect("artifact");
            check_bounds(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn each_bound_is_named_when_exceeded() {
        let many = format!("(module {})", "(func)".repeat(MAX_FUNCTIONS as usize + 1));
        let deep = format!(
            "(module (func {} {}))",
            "(block".repeat(MAX_NESTING as usize + 1),
            ")".repeat(MAX_NESTING as usize + 1)
        );
        let locals = format!(
            "(module (func (local {})))",
            "i32 ".repeat(MAX_LOCALS as usize + 1)
        );
        for (module, bound) in [
            (many, "10000 functions"),
            (deep, "deeper than 256"),
            (locals, "10000 compile limit"),
        ] {
            let err = check_bounds(&wat(&module)).expect_err("over a bound");
            assert!(err.contains(bound), "`{err}` lacks `{bound}`");
        }
        assert!(check_bounds(&wat("(module (func (block (loop))))")).is_ok());
        assert!(
            check_bounds(b"\0asm\x01\0\0\0\x0a\x05").is_err(),
            "malformed"
        );
    }
}
