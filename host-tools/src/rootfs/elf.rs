//! What a host ELF program needs at run time: its dynamic loader (`PT_INTERP`) and the
//! shared libraries it names (`DT_NEEDED`), found the way glibc's `ld.so` finds them.
//!
//! Search order, per needed library: the needing object's `DT_RUNPATH`; or, when it has
//! none, its `DT_RPATH` followed by those of the objects that loaded it; then the
//! directories of `/etc/ld.so.conf` (the host's `ld.so.cache` is built from them); then
//! the loader's built-in directories. `$ORIGIN` is expanded; other dynamic string tokens
//! (`$LIB`, `$PLATFORM`) are not, and a path using them is skipped. `LD_LIBRARY_PATH`
//! is ignored on purpose: the image must not depend on the builder's environment.
//!
//! Libraries loaded with `dlopen` at run time (NSS modules, plugins) are invisible in
//! the ELF headers and are not found here; list them in `host_files` yourself, or let
//! [`crate::trace`] see them being loaded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use crate::host::fs_error::{FsError, io_error};
use crate::host::glob::{self, Globs};

/// Where glibc's loader looks after the cache, on x86-64 Debian and Ubuntu (multiarch
/// first), and on distributions with lib64 layouts.
pub const DEFAULT_DIRS: [&str; 6] =
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// The host's loader configuration.
pub const LD_SO_CONF: &str = "/etc/ld.so.conf";

/// `include` chains deeper than this are taken to be loops.
const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("cannot parse {} as ELF", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: goblin::error::Error,
    },
    #[error("{} is not an ELF file", path.display())]
    NotElf { path: PathBuf },
    #[error("library {library} needed by {} not found (searched {searched})", needed_by.display())]
    MissingLibrary { library: String, needed_by: PathBuf, searched: String },
    #[error("{}: `include` nested too deeply (a loop?)", path.display())]
    IncludeDepth { path: PathBuf },
    #[error("{}: invalid `include` pattern", conf.display())]
    Include {
        conf: PathBuf,
        #[source]
        source: glob::Error,
    },
}

/// The parts of an ELF file that decide what it needs at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfFile {
    pub path: PathBuf,
    pub is_64: bool,
    pub machine: u16,
    /// `PT_INTERP`: the dynamic loader the kernel starts for this program.
    pub interpreter: Option<PathBuf>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` directories, unexpanded.
    pub runpath: Vec<String>,
    /// `DT_RPATH` directories, unexpanded (ignored by the loader when a runpath exists).
    pub rpath: Vec<String>,
}

impl ElfFile {
    /// Statically linked: the kernel runs it without a loader and it needs no library.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }
}

/// Reads the ELF headers of `path`; `Ok(None)` when the file is not ELF at all (a
/// script, a data file).
pub fn inspect(path: &Path) -> Result<Option<ElfFile>, Error> {
    let mut file = fs::File::open(path).map_err(io_error("read", path))?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == *b"\x7fELF" => {}
        Ok(()) => return Ok(None),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(io_error("read", path)(err).into()),
    }
    let bytes = fs::read(path).map_err(io_error("read", path))?;
    let elf = Elf::parse(&bytes).map_err(|source| Error::Parse { path: path.to_owned(), source })?;
    let split = |entries: &[&str]| -> Vec<String> {
        entries.iter().flat_map(|entry| entry.split(':')).filter(|dir| !dir.is_empty()).map(str::to_owned).collect()
    };
    Ok(Some(ElfFile {
        path: path.to_owned(),
        is_64: elf.is_64,
        machine: elf.header.e_machine,
        interpreter: elf.interpreter.map(PathBuf::from),
        needed: elf.libraries.iter().map(|name| (*name).to_owned()).collect(),
        runpath: split(&elf.runpaths),
        rpath: split(&elf.rpaths),
    }))
}

/// Like [`inspect`], but a file that is not ELF is an error.
pub fn inspect_elf(path: &Path) -> Result<ElfFile, Error> {
    inspect(path)?.ok_or_else(|| Error::NotElf { path: path.to_owned() })
}

/// What a program needs besides itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// The program's dynamic loader, as named in `PT_INTERP`.
    pub interpreter: Option<PathBuf>,
    /// Every library, the libraries' own included, each once, in breadth-first order,
    /// as the path it was found at (symlinks not resolved: that is the path the loader
    /// will open).
    pub libraries: Vec<PathBuf>,
    /// Libraries found only through `/etc/ld.so.conf`: the loader finds these through
    /// `/etc/ld.so.cache`, so the image needs that file too.
    pub needs_ld_cache: bool,
}

/// Finds libraries; keeps what it parsed, so that resolving many programs reads
/// `libc.so.6` once.
#[derive(Debug)]
pub struct Resolver {
    /// Directories from `/etc/ld.so.conf`, then [`DEFAULT_DIRS`], without repeats.
    system_dirs: Vec<PathBuf>,
    /// Which of `system_dirs` the loader searches without a cache.
    default_dirs: HashSet<PathBuf>,
    parsed: HashMap<PathBuf, Option<ElfFile>>,
    /// The tree the loader would run in: `/` for the host, or a reference root (every
    /// path the resolver handles is then a path inside it).
    root: PathBuf,
}

impl Resolver {
    /// A resolver configured like the host's loader.
    pub fn host() -> Result<Resolver, Error> {
        Ok(Resolver::with_conf_dirs(ld_so_conf_dirs(Path::new(LD_SO_CONF))?))
    }

    /// A resolver that searches `conf_dirs` (as if from `ld.so.conf`), then
    /// [`DEFAULT_DIRS`].
    pub fn with_conf_dirs(conf_dirs: Vec<PathBuf>) -> Resolver {
        let default_dirs: HashSet<PathBuf> = DEFAULT_DIRS.iter().map(PathBuf::from).collect();
        let mut system_dirs = Vec::new();
        for dir in conf_dirs.into_iter().chain(DEFAULT_DIRS.iter().map(PathBuf::from)) {
            if !system_dirs.contains(&dir) {
                system_dirs.push(dir);
            }
        }
        Resolver { system_dirs, default_dirs, parsed: HashMap::new(), root: PathBuf::from("/") }
    }

    /// A resolver configured like the loader of the tree at `root` (a chroot): its own
    /// `etc/ld.so.conf`, and every path, given or returned, inside that tree.
    pub fn in_root(root: &Path) -> Result<Resolver, Error> {
        let mut resolver = Resolver::with_conf_dirs(ld_so_conf_dirs_in(root, Path::new(LD_SO_CONF))?);
        resolver.root = root.to_owned();
        Ok(resolver)
    }

    /// Where the in-root `path` is on the host, symlinks resolved inside the root.
    fn host_path(&self, path: &Path) -> PathBuf {
        if self.root == Path::new("/") {
            return path.to_owned();
        }
        let real = crate::rootfs::path::walk(&self.root, path).map_or_else(|_| path.to_owned(), |walk| walk.real);
        crate::rootfs::path::host_path(&self.root, &real)
    }

    fn inspect_in_root(&self, path: &Path) -> Result<Option<ElfFile>, Error> {
        Ok(inspect(&self.host_path(path))?.map(|object| ElfFile { path: path.to_owned(), ..object }))
    }

    /// The directories searched after the runpath or rpath, in order.
    pub fn system_dirs(&self) -> &[PathBuf] {
        &self.system_dirs
    }

    /// The loader and all libraries `program` needs, recursively. A static program
    /// needs nothing; a file that is not ELF is an error.
    pub fn resolve(&mut self, program: &Path) -> Result<Dependencies, Error> {
        let root = self.inspect_in_root(program)?.ok_or_else(|| Error::NotElf { path: program.to_owned() })?;
        let mut deps = Dependencies { interpreter: root.interpreter.clone(), ..Dependencies::default() };
        let mut seen_names: HashSet<String> = HashSet::new();
        // (object, rpath directories inherited from the objects that loaded it)
        let mut queue: VecDeque<(ElfFile, Vec<PathBuf>)> = VecDeque::new();
        queue.push_back((root.clone(), Vec::new()));
        while let Some((object, inherited_rpath)) = queue.pop_front() {
            let origin = object.path.parent().unwrap_or(Path::new("/")).to_owned();
            let runpath = expand_dirs(&object.runpath, &origin);
            // The loader ignores DT_RPATH, its own and its loaders', when DT_RUNPATH is set.
            let rpath = if object.runpath.is_empty() {
                let mut dirs = expand_dirs(&object.rpath, &origin);
                dirs.extend(inherited_rpath);
                dirs
            } else {
                Vec::new()
            };
            for name in &object.needed {
                // The loader loads a soname once per process, whoever asks for it.
                if !seen_names.insert(name.clone()) {
                    continue;
                }
                let (found, via_conf) =
                    self.find(name, &root, &runpath, &rpath)?.ok_or_else(|| Error::MissingLibrary {
                        library: name.clone(),
                        needed_by: object.path.clone(),
                        searched: self.describe_search(&runpath, &rpath),
                    })?;
                deps.needs_ld_cache |= via_conf;
                deps.libraries.push(found.path.clone());
                queue.push_back((found, rpath.clone()));
            }
        }
        Ok(deps)
    }

    /// The first candidate for `name` that is an ELF object for the same class and
    /// machine as `root` (the loader skips a 32-bit libc.so.6 the same way), and whether
    /// it was found only through an `ld.so.conf` directory.
    fn find(
        &mut self,
        name: &str,
        root: &ElfFile,
        runpath: &[PathBuf],
        rpath: &[PathBuf],
    ) -> Result<Option<(ElfFile, bool)>, Error> {
        let candidates: Vec<(PathBuf, bool)> = if name.contains('/') {
            vec![(PathBuf::from(name), false)]
        } else {
            rpath
                .iter()
                .chain(runpath)
                .map(|dir| (dir.join(name), false))
                .chain(self.system_dirs.iter().map(|dir| (dir.join(name), !self.default_dirs.contains(dir))))
                .collect()
        };
        for (candidate, via_conf) in candidates {
            if !self.host_path(&candidate).is_file() {
                continue;
            }
            if let Some(object) = self.parse_cached(&candidate)?
                && object.is_64 == root.is_64
                && object.machine == root.machine
            {
                return Ok(Some((object, via_conf)));
            }
        }
        Ok(None)
    }

    fn parse_cached(&mut self, path: &Path) -> Result<Option<ElfFile>, Error> {
        if let Some(parsed) = self.parsed.get(path) {
            return Ok(parsed.clone());
        }
        let parsed = self.inspect_in_root(path)?;
        self.parsed.insert(path.to_owned(), parsed.clone());
        Ok(parsed)
    }

    fn describe_search(&self, runpath: &[PathBuf], rpath: &[PathBuf]) -> String {
        rpath
            .iter()
            .chain(runpath)
            .chain(&self.system_dirs)
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Expands `$ORIGIN` in runpath/rpath entries; entries with other tokens are dropped.
fn expand_dirs(entries: &[String], origin: &Path) -> Vec<PathBuf> {
    let origin = origin.to_string_lossy();
    entries
        .iter()
        .map(|entry| entry.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
        .filter(|dir| !dir.contains('$'))
        .map(PathBuf::from)
        .collect()
}

/// The library directories listed in an `ld.so.conf`-style file, `include` files
/// (with `*` and `?` wildcards in the file name) expanded in place. A missing file
/// lists nothing, as for the loader.
pub fn ld_so_conf_dirs(conf: &Path) -> Result<Vec<PathBuf>, Error> {
    ld_so_conf_dirs_in(Path::new("/"), conf)
}

/// Like [`ld_so_conf_dirs`] for the tree at `root`: `conf` and its `include`s are paths
/// inside it.
pub fn ld_so_conf_dirs_in(root: &Path, conf: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut dirs = Vec::new();
    read_conf(root, conf, 0, &mut dirs)?;
    Ok(dirs)
}

fn read_conf(root: &Path, conf: &Path, depth: usize, dirs: &mut Vec<PathBuf>) -> Result<(), Error> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(Error::IncludeDepth { path: conf.to_owned() });
    }
    let text = match fs::read_to_string(crate::rootfs::path::host_path(root, conf)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error("read", conf)(err).into()),
    };
    let conf_dir = conf.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(patterns) = line.strip_prefix("include") {
            // "include" must be its own word: "includes/lib" would be a directory.
            if patterns.starts_with(char::is_whitespace) {
                for pattern in patterns.split_whitespace() {
                    let pattern = crate::rootfs::path::host_path(root, &conf_dir.join(pattern));
                    for file in glob(conf, &pattern)? {
                        let file = crate::rootfs::path::in_root(root, &file).unwrap_or(file);
                        read_conf(root, &file, depth + 1, dirs)?;
                    }
                }
                continue;
            }
        }
        if line.starts_with("hwcap") {
            continue;
        }
        // ldconfig also accepts several directories per line, and an old "dir=TYPE".
        for dir in line.split([' ', '\t', ':', ',']) {
            let dir = dir.split('=').next().unwrap_or("");
            if dir.starts_with('/') {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    Ok(())
}

/// The files matching `pattern`, sorted; wildcards (the dialect of [`crate::host::glob`])
/// are honoured in the last component only, which is how `ld.so.conf` files use them.
fn glob(conf: &Path, pattern: &Path) -> Result<Vec<PathBuf>, Error> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Ok(Vec::new());
    };
    let name = name.to_string_lossy();
    if !name.contains(['*', '?', '[', '{', '\\']) {
        return Ok(if pattern.is_file() { vec![pattern.to_owned()] } else { Vec::new() });
    }
    let globs = Globs::new(&[&name]).map_err(|source| Error::Include { conf: conf.to_owned(), source })?;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error("read", dir)(err).into()),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read", dir))?;
        if globs.matches(entry.file_name()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Component;
    use std::process::Command;

    /// `path` without `.` and `..` components, lexically.
    fn normalize_lexically(path: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for component in path.components() {
            match component {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    fn file_names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn bash_needs_libc_and_the_loader() {
        let bash = Path::new("/bin/bash");
        if !bash.exists() {
            panic!("cannot run: no /bin/bash on this host (tests/run installs what the tests need)");
        }
        let mut resolver = Resolver::host().unwrap();
        let deps = resolver.resolve(bash).unwrap();
        let names = file_names(&deps.libraries);
        assert!(names.contains(&"libc.so.6".to_owned()), "{names:?}");
        let loader = deps.interpreter.expect("bash is dynamic");
        assert!(loader.to_string_lossy().contains("ld-linux"), "{}", loader.display());
        let unique: HashSet<&PathBuf> = deps.libraries.iter().collect();
        assert_eq!(unique.len(), deps.libraries.len(), "deduplicated");
        for library in &deps.libraries {
            assert!(library.is_absolute() && library.is_file(), "{library:?}");
        }
        assert!(!inspect_elf(bash).unwrap().is_static());
    }

    #[test]
    fn a_static_program_needs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("static");
        let compiled = Command::new("gcc")
            .args(["-static", "-x", "c", "-", "-o"])
            .arg(&program)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"int main(void){return 0;}")?;
                child.wait()
            });
        let program = match compiled {
            Ok(status) if status.success() => program,
            // Debian's ldconfig is a static binary.
            _ if Path::new("/sbin/ldconfig").exists() => PathBuf::from("/sbin/ldconfig"),
            _ => {
                panic!(
                    "cannot run: no gcc -static and no static /sbin/ldconfig (tests/run installs what the tests need)"
                );
            }
        };
        let elf = inspect_elf(&program).unwrap();
        assert!(elf.is_static(), "{elf:?}");
        let deps = Resolver::with_conf_dirs(Vec::new()).resolve(&program).unwrap();
        assert_eq!(deps, Dependencies::default());
    }

    #[test]
    fn scripts_are_not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(inspect(&script).unwrap(), None);
        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        assert_eq!(inspect(&empty).unwrap(), None);
        let err = Resolver::with_conf_dirs(Vec::new()).resolve(&script).unwrap_err();
        assert!(err.to_string().contains("is not an ELF file"), "{err}");
    }

    /// A program whose library exists nowhere: the error names both.
    #[test]
    fn missing_library_names_library_and_needer() {
        let dir = tempfile::tempdir().unwrap();
        let lib_src = dir.path().join("lib.c");
        let lib = dir.path().join("libgone.so");
        let main_src = dir.path().join("main.c");
        let program = dir.path().join("needs-gone");
        fs::write(&lib_src, "int gone(void){return 1;}").unwrap();
        fs::write(&main_src, "int gone(void); int main(void){return gone();}").unwrap();
        let built = Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&lib_src)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("gcc")
                .arg("-o")
                .arg(&program)
                .arg(&main_src)
                .arg(format!("-L{}", dir.path().display()))
                .arg("-lgone")
                .status()
                .is_ok_and(|s| s.success());
        if !built {
            panic!("cannot run: gcc cannot build a shared library here (tests/run installs what the tests need)");
        }
        fs::remove_file(&lib).unwrap();
        let err = Resolver::host().unwrap().resolve(&program).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("library libgone.so"), "{message}");
        assert!(message.contains("needs-gone"), "{message}");
    }

    /// $ORIGIN-relative runpaths are searched before the system directories.
    #[test]
    fn runpath_with_origin() {
        let dir = tempfile::tempdir().unwrap();
        let libdir = dir.path().join("lib");
        fs::create_dir(&libdir).unwrap();
        let lib_src = dir.path().join("lib.c");
        let main_src = dir.path().join("main.c");
        let program = dir.path().join("bin/prog");
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::write(&lib_src, "int mine(void){return 1;}").unwrap();
        fs::write(&main_src, "int mine(void); int main(void){return mine();}").unwrap();
        let built = Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(libdir.join("libmine.so"))
            .arg(&lib_src)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("gcc")
                .arg("-o")
                .arg(&program)
                .arg(&main_src)
                .arg(format!("-L{}", libdir.display()))
                .args(["-lmine", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib"])
                .status()
                .is_ok_and(|s| s.success());
        if !built {
            panic!("cannot run: gcc cannot build a shared library here (tests/run installs what the tests need)");
        }
        let elf = inspect_elf(&program).unwrap();
        assert_eq!(elf.runpath, ["$ORIGIN/../lib"]);
        let deps = Resolver::host().unwrap().resolve(&program).unwrap();
        let found = deps.libraries.iter().find(|lib| lib.ends_with("libmine.so")).expect("libmine.so resolved");
        assert_eq!(normalize_lexically(found), normalize_lexically(&libdir.join("libmine.so")));
    }

    #[test]
    fn ld_so_conf_with_includes_comments_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        fs::create_dir(&conf_d).unwrap();
        let conf = dir.path().join("ld.so.conf");
        fs::write(&conf, "/first # a comment\ninclude conf.d/*.conf\nhwcap 0 nosegneg\n/last:/also\n").unwrap();
        fs::write(conf_d.join("b.conf"), "/from-b\n").unwrap();
        fs::write(conf_d.join("a.conf"), "# only a comment\n/from-a\n").unwrap();
        fs::write(conf_d.join("ignored.txt"), "/not-me\n").unwrap();
        let dirs = ld_so_conf_dirs(&conf).unwrap();
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/first", "/from-a", "/from-b", "/last", "/also"]);

        fs::write(conf_d.join("loop.conf"), format!("include {}\n", conf.display())).unwrap();
        let err = ld_so_conf_dirs(&conf).unwrap_err();
        assert!(matches!(err, Error::IncludeDepth { .. }), "{err}");

        assert!(ld_so_conf_dirs(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn system_dirs_put_conf_first_without_repeats() {
        let resolver =
            Resolver::with_conf_dirs(vec![PathBuf::from("/usr/local/lib"), PathBuf::from("/lib/x86_64-linux-gnu")]);
        let dirs: Vec<&str> = resolver.system_dirs().iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs[0], "/usr/local/lib");
        assert_eq!(dirs[1], "/lib/x86_64-linux-gnu");
        assert_eq!(dirs.len(), 1 + DEFAULT_DIRS.len());
    }

    /// A reference root holding bash and its libraries (copied from the host): found in
    /// the root, named as paths inside it.
    #[test]
    fn resolving_inside_a_root() {
        let host = Resolver::host().unwrap().resolve(Path::new("/bin/bash")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bash = fs::canonicalize("/bin/bash").unwrap();
        let libdir = fs::canonicalize(&host.libraries[0]).unwrap().parent().unwrap().to_owned();
        // Each library under the name it is needed by, in one directory.
        let mut copies: Vec<(PathBuf, PathBuf)> =
            host.libraries.iter().map(|l| (l.clone(), libdir.join(l.file_name().unwrap()))).collect();
        copies.push((bash.clone(), bash.clone()));
        for (from, to) in copies {
            let target = root.join(to.strip_prefix("/").unwrap());
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::copy(&from, &target).unwrap();
        }
        fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
        fs::write(root.join("etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n").unwrap();
        fs::write(root.join("etc/ld.so.conf.d/lib.conf"), format!("{}\n", libdir.display())).unwrap();

        let mut resolver = Resolver::in_root(root).unwrap();
        assert_eq!(resolver.system_dirs()[0], libdir);
        let deps = resolver.resolve(&bash).unwrap();
        assert_eq!(file_names(&deps.libraries), file_names(&host.libraries));
        for library in &deps.libraries {
            assert!(library.starts_with(&libdir), "{} is not a path inside the root", library.display());
        }
        assert_eq!(deps.interpreter, host.interpreter);
    }

    #[test]
    fn include_wildcard_table() {
        let cases = [
            ("*.conf", "libc.conf", true),
            ("*.conf", "libc.conf~", false),
            ("?.conf", "a.conf", true),
            ("?.conf", "ab.conf", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(Globs::new(&[pattern]).unwrap().matches(name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn origin_expansion() {
        let dirs = expand_dirs(
            &["$ORIGIN/../lib".to_owned(), "${ORIGIN}/x".to_owned(), "/abs".to_owned(), "$LIB/y".to_owned()],
            Path::new("/opt/app/bin"),
        );
        assert_eq!(
            dirs,
            [PathBuf::from("/opt/app/bin/../lib"), PathBuf::from("/opt/app/bin/x"), PathBuf::from("/abs")]
        );
    }
}
