//! Kernel modules for an image: the manifest names the modules it wants, this module finds
//! them in the kernel's `lib/modules/<release>`, adds their dependencies, decompresses them
//! and packs them under `/lib/modules/<release>/` in the initramfs, with the lists
//! `appliance-init` reads at boot (`appliance.order`, `modules.dep`, `modules.builtin`),
//! in the format [`appliance_cmdline::modules`] defines for both sides.
//!
//! Dependencies come from the kernel's `modules.dep` when it has one. Debian's kernel
//! packages ship none (their post-install script runs `depmod`), so otherwise they are read
//! from each module's `.modinfo` section, whose `depends=` entry is what `modpost` computed
//! from the module's undefined symbols and what `depmod` itself would find: no `depmod`
//! (nor root, nor a scratch tree) is needed on the host.
//!
//! It does not load anything, resolve aliases (`modalias`, `softdep`) or module parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use appliance_cmdline::modules::{
    BUILTIN_FILE, DEP_FILE, DepEntry, MODULES_ROOT, ORDER_FILE, canonical, dep_line, name_of_path, packed_path,
    parse_builtin, parse_dep, render_order,
};
use appliance_cmdline::suggest;

use crate::archive::cpio::{self, Archive, Entry};
use crate::host::fs_error::{FsError, io_error};
use crate::kernel::KernelInfo;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the image asks for kernel modules ({names}), but kernel {} comes without any: a \
         kernel given as a bzImage path has no lib/modules/<release> next to it. Build those \
         drivers into the kernel (=y) and drop `modules`, or use kernel = \"debian-cloud\"",
        kernel.display()
    )]
    NoModulesDir { kernel: PathBuf, names: String },
    #[error("no kernel module `{name}` in {}{}", dir.display(), suggestions(.near))]
    Unknown { name: String, dir: PathBuf, near: Vec<String> },
    #[error("module {name}: dependency loop through {through}")]
    Cycle { name: String, through: String },
    #[error("module {name} depends on `{dependency}`, which is not in {}", dir.display())]
    MissingDependency { name: String, dependency: String, dir: PathBuf },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{} is not a kernel module: {reason}", path.display())]
    NotModule { path: PathBuf, reason: String },
    #[error(transparent)]
    Archive(#[from] cpio::Error),
}

fn suggestions(near: &[String]) -> String {
    if near.is_empty() { String::new() } else { format!("; did you mean {}?", near.join(", ")) }
}

/// The modules of one kernel: every module file under its modules directory, by name.
#[derive(Clone, Debug)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// Canonical name → path relative to `dir`, as found (possibly compressed).
    files: BTreeMap<String, String>,
    /// Canonical name → its line of `modules.dep` when the kernel has one; otherwise the
    /// dependencies come from `.modinfo` as modules are resolved.
    deps: Option<BTreeMap<String, DepEntry>>,
    builtin: BTreeSet<String>,
}

/// One module to pack: its name, its path relative to the modules directory as found,
/// and the names of the modules it needs loaded first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: String,
    pub deps: Vec<String>,
}

impl Module {
    /// Its path in the image: relative like `path`, decompressed, so always `.ko`.
    pub fn image_path(&self) -> String {
        packed_path(&self.path)
    }
}

impl ModuleIndex {
    /// Reads the module files under `dir` (a kernel's `lib/modules/<release>`), its
    /// `modules.dep` when present, and its `modules.builtin`.
    pub fn open(dir: &Path) -> Result<ModuleIndex, Error> {
        let mut files = BTreeMap::new();
        walk(dir, dir, &mut files)?;
        let deps = match fs::read_to_string(dir.join(DEP_FILE)) {
            Ok(text) => Some(parse_dep(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::Io(FsError { action: "read", path: dir.join(DEP_FILE), source })),
        };
        let builtin = match fs::read_to_string(dir.join(BUILTIN_FILE)) {
            Ok(text) => parse_builtin(&text),
            Err(_) => BTreeSet::new(),
        };
        Ok(ModuleIndex { dir: dir.to_owned(), files, deps, builtin })
    }

    /// Whether the kernel has `name` built in (nothing to load).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical(name))
    }

    /// The modules `names` need, each once, dependencies before the modules that need
    /// them, in the order `names` gives otherwise. Built-in modules are left out.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Module>, Error> {
        let mut order = Vec::new();
        let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false: on the path; true: done
        for name in names {
            let name = canonical(name);
            if self.is_builtin(&name) && !self.files.contains_key(&name) {
                log::info!("module {name} is built into the kernel: nothing to pack");
                continue;
            }
            if !self.files.contains_key(&name) {
                return Err(Error::Unknown { near: self.near(&name), name, dir: self.dir.clone() });
            }
            self.visit(&name, &mut state, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        state: &mut BTreeMap<String, bool>,
        path: &mut Vec<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), Error> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => {
                path.push(name.to_owned());
                return Err(Error::Cycle { name: name.to_owned(), through: path.join(" -> ") });
            }
            None => {}
        }
        let Some(file) = self.files.get(name) else {
            let needed_by = path.last().cloned().unwrap_or_default();
            return Err(Error::MissingDependency {
                name: needed_by,
                dependency: name.to_owned(),
                dir: self.dir.clone(),
            });
        };
        state.insert(name.to_owned(), false);
        path.push(name.to_owned());
        let deps = self.deps_of(name, file)?;
        for dep in &deps {
            if self.is_builtin(dep) && !self.files.contains_key(dep) {
                continue;
            }
            self.visit(dep, state, path, order)?;
        }
        path.pop();
        state.insert(name.to_owned(), true);
        order.push(Module { name: name.to_owned(), path: file.clone(), deps });
        Ok(())
    }

    fn deps_of(&self, name: &str, file: &str) -> Result<Vec<String>, Error> {
        if let Some(deps) = &self.deps {
            return Ok(deps.get(name).map(|entry| entry.deps.clone()).unwrap_or_default());
        }
        let path = self.dir.join(file);
        let data = read_module(&path)?;
        let info = modinfo(&data).map_err(|reason| Error::NotModule { path: path.clone(), reason })?;
        Ok(info
            .iter()
            .filter_map(|entry| entry.strip_prefix("depends="))
            .flat_map(|list| list.split(','))
            .filter(|dep| !dep.is_empty())
            .map(canonical)
            .collect())
    }

    /// Up to five module names close to `name`: those containing it, and those within a
    /// few edits of it.
    pub fn near(&self, name: &str) -> Vec<String> {
        let limit = suggest::max_typo_edits(name);
        let mut scored: Vec<(usize, &String)> = self
            .files
            .keys()
            .filter_map(|known| {
                let d = suggest::edit_distance(name, known);
                if d <= limit {
                    Some((d, known))
                } else if name.len() >= 3 && known.contains(name) {
                    Some((limit + 1 + known.len() - name.len(), known))
                } else {
                    None
                }
            })
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, known)| known.clone()).collect()
    }

    /// The modules directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Every module file under `dir`, by canonical name (the first found wins: an
/// uncompressed one over a compressed one, by the order of
/// [`SUFFIXES`](appliance_cmdline::modules::SUFFIXES) within a directory).
fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) -> Result<(), Error> {
    let mut entries: Vec<fs::DirEntry> =
        fs::read_dir(dir).map_err(io_error("read", dir))?.collect::<Result<_, _>>().map_err(io_error("read", dir))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error("read", &path))?;
        if file_type.is_dir() {
            walk(root, &path, files)?;
        } else if let Some(name) = path.to_str().and_then(name_of_path) {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            files.entry(name).or_insert(relative);
        }
    }
    Ok(())
}

/// Reads a module file, decompressing it when it is compressed (by its magic bytes, not
/// its name).
pub fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    let data = fs::read(path).map_err(io_error("read", path))?;
    Ok(decompress(&data).map_err(io_error("decompress", path))?)
}

/// Decompresses xz, zstd or gzip data; anything else is returned as it is.
pub fn decompress(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3);
    if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        xz2::read::XzDecoder::new_multi_decoder(data).read_to_end(&mut out)?;
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::stream::decode_all(data)?;
    } else if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    } else {
        return Ok(data.to_vec());
    }
    Ok(out)
}

/// The NUL-separated `key=value` strings of an ELF module's `.modinfo` section.
pub fn modinfo(data: &[u8]) -> Result<Vec<String>, String> {
    let elf = goblin::elf::Elf::parse(data).map_err(|err| err.to_string())?;
    let section = elf
        .section_headers
        .iter()
        .find(|header| elf.shdr_strtab.get_at(header.sh_name) == Some(".modinfo"))
        .ok_or_else(|| "it has no .modinfo section".to_owned())?;
    let range = section.file_range().ok_or_else(|| ".modinfo has no contents".to_owned())?;
    let bytes = data.get(range).ok_or_else(|| ".modinfo lies beyond the end of the file".to_owned())?;
    Ok(bytes.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// What [`pack`] put into the image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Modules loaded at every boot, in load order.
    pub load: Vec<String>,
    /// Every packed module, sorted by name.
    pub packed: Vec<String>,
}

/// Packs `load` (loaded at every boot) and `available` (packed only, for `appModules`),
/// with their dependencies, into the image under `/lib/modules/<release>/`, with
/// `appliance.order`, `modules.dep` and `modules.builtin`; and, packed only too, those of
/// `features` (the drivers of `appliance run`'s features,
/// [`FEATURE_MODULES`](appliance_cmdline::modules::FEATURE_MODULES)) that the kernel has
/// as modules: a feature module the kernel lacks or has built in is no error, nor is a
/// kernel without modules. Nothing is added when there is nothing to pack.
pub fn pack(
    archive: &mut Archive,
    kernel: &KernelInfo,
    load: &[String],
    available: &[String],
    features: &[&str],
) -> Result<Packed, Error> {
    if load.is_empty() && available.is_empty() && (features.is_empty() || kernel.modules_dir.is_none()) {
        return Ok(Packed::default());
    }
    let Some(dir) = &kernel.modules_dir else {
        let names = load.iter().chain(available).cloned().collect::<Vec<_>>().join(", ");
        return Err(Error::NoModulesDir { kernel: kernel.vmlinuz.clone(), names });
    };
    let index = ModuleIndex::open(dir)?;
    let to_load = index.resolve(load)?;
    let mut all: BTreeMap<String, Module> = to_load.iter().map(|m| (m.name.clone(), m.clone())).collect();
    let mut optional = Vec::new();
    for name in features.iter().map(|name| canonical(name)) {
        if !index.files.contains_key(&name) {
            continue;
        }
        match index.resolve(std::slice::from_ref(&name)) {
            Ok(modules) => optional.extend(modules),
            // The feature will say what is missing when it is used; the image builds.
            Err(err) => log::warn!("not packing module {name} (used by appliance run's features): {err}"),
        }
    }
    for module in index.resolve(available)?.into_iter().chain(optional) {
        all.entry(module.name.clone()).or_insert(module);
    }
    if all.is_empty() {
        return Ok(Packed::default());
    }
    // On a merged-/usr image (host files bring `lib -> usr/lib`) the files go where the
    // symlink points; the init reads them as /lib/modules either way.
    let base = resolve_in_archive(archive, &format!("{MODULES_ROOT}/{}", kernel.version));
    for module in all.values() {
        let source = dir.join(&module.path);
        let target = format!("{base}/{}", module.image_path());
        if module.path.ends_with(".ko") {
            archive.add(Entry::file(target, source, 0o644))?;
        } else {
            archive.add(Entry::data(target, read_module(&source)?, 0o644))?;
        }
    }
    archive.add(Entry::data(format!("{base}/{DEP_FILE}"), render_dep(&all), 0o644))?;
    let order = render_order(&to_load.iter().map(Module::image_path).collect::<Vec<_>>());
    archive.add(Entry::data(format!("{base}/{ORDER_FILE}"), order, 0o644))?;
    let builtin = dir.join(BUILTIN_FILE);
    if builtin.is_file() {
        archive.add(Entry::file(format!("{base}/{BUILTIN_FILE}"), builtin, 0o644))?;
    }
    let packed =
        Packed { load: to_load.iter().map(|m| m.name.clone()).collect(), packed: all.keys().cloned().collect() };
    log::info!(
        "packing {} kernel module(s) of {}: loaded at boot: {}",
        packed.packed.len(),
        kernel.version,
        if packed.load.is_empty() { "none".to_owned() } else { packed.load.join(" ") }
    );
    Ok(packed)
}

/// `path` with the symlinks the archive holds along it resolved, so that files can be
/// added under it: `/lib/modules/x` is `/usr/lib/modules/x` when `lib` links to `usr/lib`.
fn resolve_in_archive(archive: &Archive, path: &str) -> String {
    let mut done: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path.split('/').filter(|p| !p.is_empty()).rev().map(str::to_owned).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        if part == "." {
            continue;
        }
        done.push(part);
        let here = done.join("/");
        if let Some(cpio::Kind::Symlink { target }) = archive.get(&here).map(Entry::kind)
            && links < 40
        {
            links += 1;
            done.pop();
            if target.is_absolute() {
                done.clear();
            }
            let target = target.to_string_lossy();
            pending.extend(target.split('/').filter(|p| !p.is_empty()).rev().map(str::to_owned));
        }
    }
    format!("/{}", done.join("/"))
}

/// `modules.dep` for `modules`: each with all its dependencies, those loaded last first
/// (the kernel's convention: a loader walks the list backwards).
pub fn render_dep(modules: &BTreeMap<String, Module>) -> String {
    let mut out = String::new();
    for module in modules.values() {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        transitive(modules, module, &mut seen, &mut order);
        order.pop(); // the module itself
        let deps: Vec<String> = order.iter().rev().map(|m| m.image_path()).collect();
        out.push_str(&dep_line(&module.image_path(), &deps));
    }
    out
}

fn transitive<'a>(
    modules: &'a BTreeMap<String, Module>,
    module: &'a Module,
    seen: &mut BTreeSet<&'a str>,
    order: &mut Vec<&'a Module>,
) {
    if !seen.insert(&module.name) {
        return;
    }
    for dep in &module.deps {
        if let Some(dep) = modules.get(dep) {
            transitive(modules, dep, seen, order);
        }
    }
    order.push(module);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fake kernel modules tree: `(relative path, depends)`, each written as a tiny ELF
    /// relocatable with a `.modinfo` section, compressed by its suffix.
    fn tree(modules: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, depends) in modules {
            let file = dir.path().join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            let name = name_of_path(path).unwrap();
            let elf = fake_module(&format!("depends={depends}\0name={name}\0license=GPL\0"));
            let data = if path.ends_with(".xz") {
                let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
                enc.write_all(&elf).unwrap();
                enc.finish().unwrap()
            } else if path.ends_with(".zst") {
                zstd::encode_all(&elf[..], 3).unwrap()
            } else {
                elf
            };
            fs::write(file, data).unwrap();
        }
        dir
    }

    /// A minimal 64-bit ELF with a null section, `.modinfo` and `.shstrtab`.
    fn fake_module(modinfo: &str) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut out = vec![0u8; 64];
        let modinfo_off = out.len();
        out.extend_from_slice(modinfo.as_bytes());
        let strtab_off = out.len();
        out.extend_from_slice(shstrtab);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len();
        let section = |name: u32, kind: u32, offset: usize, size: usize| {
            let mut s = Vec::with_capacity(64);
            s.extend_from_slice(&name.to_le_bytes());
            s.extend_from_slice(&kind.to_le_bytes());
            s.extend_from_slice(&0u64.to_le_bytes()); // flags
            s.extend_from_slice(&0u64.to_le_bytes()); // addr
            s.extend_from_slice(&(offset as u64).to_le_bytes());
            s.extend_from_slice(&(size as u64).to_le_bytes());
            s.extend_from_slice(&0u32.to_le_bytes()); // link
            s.extend_from_slice(&0u32.to_le_bytes()); // info
            s.extend_from_slice(&1u64.to_le_bytes()); // addralign
            s.extend_from_slice(&0u64.to_le_bytes()); // entsize
            s
        };
        out.extend(section(0, 0, 0, 0));
        out.extend(section(1, 1, modinfo_off, modinfo.len())); // PROGBITS
        out.extend(section(10, 3, strtab_off, shstrtab.len())); // STRTAB
        let header = &mut out[..64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2; // 64-bit
        header[5] = 1; // little endian
        header[6] = 1; // version
        header[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        header[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        header[20..24].copy_from_slice(&1u32.to_le_bytes());
        header[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        header[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        header[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        header[60..62].copy_from_slice(&3u16.to_le_bytes()); // shnum
        header[62..64].copy_from_slice(&2u16.to_le_bytes()); // shstrndx
        out
    }

    fn virtio_tree() -> tempfile::TempDir {
        tree(&[
            ("kernel/drivers/net/virtio_net.ko.xz", "net_failover,virtio,virtio_ring"),
            ("kernel/drivers/net/net_failover.ko.zst", "failover"),
            ("kernel/net/core/failover.ko", ""),
            ("kernel/drivers/virtio/virtio.ko", ""),
            ("kernel/drivers/virtio/virtio_ring.ko", "virtio"),
            ("kernel/drivers/virtio/virtio_pci.ko", "virtio,virtio_ring,virtio_pci_modern_dev"),
            ("kernel/drivers/virtio/virtio_pci_modern_dev.ko", ""),
            ("kernel/fs/9p/9p.ko", "9pnet,netfs"),
        ])
    }

    fn names(modules: &[Module]) -> Vec<&str> {
        modules.iter().map(|m| m.name.as_str()).collect()
    }

    /// Every module comes after all its dependencies.
    fn assert_dependencies_first(modules: &[Module]) {
        for (i, module) in modules.iter().enumerate() {
            for dep in &module.deps {
                let at = modules.iter().position(|m| &m.name == dep).unwrap();
                assert!(at < i, "{dep} after {} in {:?}", module.name, names(modules));
            }
        }
    }

    #[test]
    fn dependencies_come_first_from_modinfo() {
        let dir = virtio_tree();
        let index = ModuleIndex::open(dir.path()).unwrap();
        let order = index.resolve(&["virtio_net".into()]).unwrap();
        assert_eq!(names(&order), ["failover", "net_failover", "virtio", "virtio_ring", "virtio_net"]);
        assert_dependencies_first(&order);
        let order = index.resolve(&["virtio-pci".into(), "virtio_net".into(), "virtio".into()]).unwrap();
        assert_eq!(names(&order).len(), 7, "each module once: {:?}", names(&order));
        assert_dependencies_first(&order);
        assert_eq!(order[0].path, "kernel/drivers/virtio/virtio.ko");
        let net = order.iter().find(|m| m.name == "virtio_net").unwrap();
        assert_eq!(net.image_path(), "kernel/drivers/net/virtio_net.ko");
    }

    #[test]
    fn modules_dep_is_preferred_when_the_kernel_has_one() {
        let dir = virtio_tree();
        // A modules.dep that disagrees with .modinfo, to see which one is used.
        fs::write(dir.path().join(DEP_FILE), "kernel/drivers/net/virtio_net.ko.xz: kernel/net/core/failover.ko\n")
            .unwrap();
        let index = ModuleIndex::open(dir.path()).unwrap();
        assert_eq!(names(&index.resolve(&["virtio_net".into()]).unwrap()), ["failover", "virtio_net"]);
    }

    #[test]
    fn unknown_modules_name_themselves_and_near_names() {
        let dir = virtio_tree();
        let index = ModuleIndex::open(dir.path()).unwrap();
        let err = index.resolve(&["virtio_nte".into()]).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("no kernel module `virtio_nte` in "), "{message}");
        // The closest first.
        assert!(message.contains("; did you mean virtio_net, virtio_pci?"), "{message}");
        let err = index.resolve(&["virtio_pc".into()]).unwrap_err();
        assert!(err.to_string().contains("did you mean virtio_pci, "), "{err}");
        let err = index.resolve(&["xyzzy".into()]).unwrap_err();
        assert!(!err.to_string().contains("did you mean"), "{err}");
        // A dependency missing from the tree names who needs it.
        let err = index.resolve(&["9p".into()]).unwrap_err();
        assert_eq!(err.to_string(), format!("module 9p depends on `9pnet`, which is not in {}", dir.path().display()));
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let dir = virtio_tree();
        fs::write(dir.path().join(BUILTIN_FILE), "kernel/drivers/block/virtio_blk.ko\n").unwrap();
        let index = ModuleIndex::open(dir.path()).unwrap();
        assert!(index.resolve(&["virtio_blk".into()]).unwrap().is_empty());
    }

    #[test]
    fn cycles_are_errors() {
        let dir = tree(&[("a.ko", "b"), ("b.ko", "c"), ("c.ko", "a")]);
        let err = ModuleIndex::open(dir.path()).unwrap().resolve(&["a".into()]).unwrap_err();
        assert_eq!(err.to_string(), "module a: dependency loop through a -> b -> c -> a");
    }

    #[test]
    fn decompression_by_magic() {
        let plain = b"\x7fELF plain".to_vec();
        assert_eq!(decompress(&plain).unwrap(), plain);
        assert_eq!(decompress(&zstd::encode_all(&plain[..], 3).unwrap()).unwrap(), plain);
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&plain).unwrap();
        assert_eq!(decompress(&xz.finish().unwrap()).unwrap(), plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        assert_eq!(decompress(&gz.finish().unwrap()).unwrap(), plain);
        assert!(decompress(b"\xfd7zXZ\0 truncated").is_err());
    }

    #[test]
    fn pack_writes_modules_order_and_dep() {
        let dir = virtio_tree();
        fs::write(dir.path().join(BUILTIN_FILE), "kernel/drivers/block/virtio_blk.ko\n").unwrap();
        let kernel = KernelInfo {
            vmlinuz: PathBuf::from("/k/vmlinuz"),
            modules_dir: Some(dir.path().to_owned()),
            version: "9.9.9".into(),
        };
        let mut archive = Archive::new();
        let packed = pack(&mut archive, &kernel, &["virtio_net".into()], &["virtio_pci".into()], &[]).unwrap();
        assert_eq!(packed.load, ["failover", "net_failover", "virtio", "virtio_ring", "virtio_net"]);
        assert_eq!(packed.packed.len(), 7);
        let data = |path: &str| match archive.get(path).unwrap().kind() {
            cpio::Kind::Data(data) => String::from_utf8_lossy(data).into_owned(),
            cpio::Kind::File { source } => String::from_utf8_lossy(&fs::read(source).unwrap()).into_owned(),
            other => panic!("{path}: {other:?}"),
        };
        // Decompressed, under a .ko name.
        assert!(data("lib/modules/9.9.9/kernel/drivers/net/virtio_net.ko").starts_with("\x7fELF"));
        assert!(data("lib/modules/9.9.9/kernel/drivers/net/net_failover.ko").starts_with("\x7fELF"));
        assert_eq!(
            data("lib/modules/9.9.9/appliance.order"),
            "kernel/net/core/failover.ko\nkernel/drivers/net/net_failover.ko\nkernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/net/virtio_net.ko\n"
        );
        let dep = data("lib/modules/9.9.9/modules.dep");
        assert!(
            dep.contains(
                "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko \
                 kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n"
            ),
            "{dep}"
        );
        assert!(dep.contains("kernel/net/core/failover.ko:\n"), "{dep}");
        assert_eq!(data("lib/modules/9.9.9/modules.builtin"), "kernel/drivers/block/virtio_blk.ko\n");
        // The image's modules.dep reads back to the same graph.
        let reread = parse_dep(&dep);
        assert_eq!(reread["virtio_net"].deps.len(), 4);
    }

    /// The drivers of `appliance run`'s features: packed as available when the kernel has
    /// them as modules, without failing the build when it has not.
    #[test]
    fn feature_modules_are_packed_when_the_kernel_has_them() {
        let dir = virtio_tree();
        fs::write(dir.path().join(BUILTIN_FILE), "kernel/drivers/block/virtio_blk.ko\n").unwrap();
        let kernel = KernelInfo {
            vmlinuz: PathBuf::from("/k/vmlinuz"),
            modules_dir: Some(dir.path().to_owned()),
            version: "9.9.9".into(),
        };
        let mut archive = Archive::new();
        // 9p's dependencies are not in the tree; virtio_blk is built in; nfsv4 is absent.
        let features = ["virtio-pci", "virtio_net", "virtio_blk", "nfsv4", "9p"];
        let packed = pack(&mut archive, &kernel, &[], &[], &features).unwrap();
        assert!(packed.load.is_empty());
        assert_eq!(
            packed.packed,
            ["failover", "net_failover", "virtio", "virtio_net", "virtio_pci", "virtio_pci_modern_dev", "virtio_ring"]
        );
        assert!(archive.get("lib/modules/9.9.9/kernel/drivers/net/virtio_net.ko").is_some());
        assert!(archive.get("lib/modules/9.9.9/kernel/fs/9p/9p.ko").is_none());
        let Some(cpio::Kind::Data(order)) = archive.get("lib/modules/9.9.9/appliance.order").map(Entry::kind) else {
            panic!("no appliance.order")
        };
        assert!(order.is_empty(), "nothing loaded at every boot");
        // A kernel whose tree has none of them: no modules directory in the image at all.
        let bare = tree(&[("kernel/fs/ext4/ext4.ko", "")]);
        let kernel = KernelInfo { modules_dir: Some(bare.path().to_owned()), ..kernel };
        let mut archive = Archive::new();
        assert_eq!(pack(&mut archive, &kernel, &[], &[], &features).unwrap(), Packed::default());
        assert!(archive.is_empty());
    }

    #[test]
    fn merged_usr_symlinks_are_followed() {
        let mut archive = Archive::new();
        assert_eq!(resolve_in_archive(&archive, "/lib/modules/1"), "/lib/modules/1");
        archive.add(Entry::symlink("/lib", "usr/lib")).unwrap();
        assert_eq!(resolve_in_archive(&archive, "/lib/modules/1"), "/usr/lib/modules/1");
        archive.add(Entry::symlink("/usr/lib/modules", "/x/../opt/m")).unwrap();
        assert_eq!(resolve_in_archive(&archive, "/lib/modules/1"), "/opt/m/1");
        let mut looped = Archive::new();
        looped.add(Entry::symlink("/lib", "lib")).unwrap();
        resolve_in_archive(&looped, "/lib/modules/1");
    }

    #[test]
    fn a_kernel_without_modules_says_so() {
        let kernel = KernelInfo { vmlinuz: PathBuf::from("/k/bzImage"), modules_dir: None, version: "unknown".into() };
        let mut archive = Archive::new();
        assert_eq!(pack(&mut archive, &kernel, &[], &[], &[]).unwrap(), Packed::default());
        // The features' drivers are built in, or the kernel lacks them: nothing to pack.
        assert_eq!(pack(&mut archive, &kernel, &[], &[], &["virtio_net"]).unwrap(), Packed::default());
        let err = pack(&mut archive, &kernel, &["virtio_net".into()], &[], &[]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("(virtio_net)"), "{message}");
        assert!(message.contains("kernel /k/bzImage comes without any"), "{message}");
        assert!(archive.is_empty());
    }

    /// The real kernel: Debian's cloud kernel, as fetched into the cache by the kernel
    /// module's tests and the boot tests.
    #[test]
    fn debian_cloud_virtio_net() {
        let Ok(cache) = crate::kernel::default_cache_dir() else {
            panic!("cannot run: no cache directory (HOME unset)");
        };
        let kernel = crate::kernel::debian_cloud(&cache).unwrap();
        let index = ModuleIndex::open(kernel.modules_dir.as_deref().unwrap()).unwrap();
        let order = index.resolve(&["virtio_net".into(), "virtio_pci".into()]).unwrap();
        assert_dependencies_first(&order);
        let names = names(&order);
        for needed in ["failover", "net_failover", "virtio", "virtio_ring", "virtio_net", "virtio_pci"] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
    }
}
