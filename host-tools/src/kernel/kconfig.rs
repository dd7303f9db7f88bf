//! Kernel configurations as data: `.config` files and fragments, merging fragments as
//! `scripts/kconfig/merge_config.sh` does, and checking that a resolved `.config` kept
//! every value the fragments asked for, with the reason when the kernel's `Kconfig`
//! files tell it (an unmet `depends on`, a hidden prompt, an option only ever selected,
//! an option this kernel does not have).
//!
//! This module never runs `make`: resolving a configuration is [`crate::kernel::kbuild`]'s job.
//! The `Kconfig` reader understands what dependencies are made of (`config`,
//! `menuconfig`, `depends on`, `if`/`menu`/`choice` blocks, prompts with `if`, `select`,
//! `source`) and skips the rest (defaults, ranges, help texts); it explains a lost
//! option, it does not resolve a configuration.

use crate::host::fs_error::{FsError, io_error};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The prefix of every option in `.config` files.
pub const PREFIX: &str = "CONFIG_";

/// One option's value, as written in a `.config` file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// `=y`: built in.
    Yes,
    /// `=m`: a module.
    Module,
    /// `# CONFIG_X is not set`, or `=n` in a fragment.
    No,
    /// A string (with its quotes and escapes, as written), a number or a hex number.
    Text(String),
}

impl Value {
    fn parse(raw: &str) -> Value {
        match raw {
            "y" => Value::Yes,
            "m" => Value::Module,
            "n" => Value::No,
            other => Value::Text(other.to_owned()),
        }
    }

    /// The tristate level of a bool or tristate value; `None` for text.
    pub fn tristate(&self) -> Option<Tristate> {
        match self {
            Value::Yes => Some(Tristate::Yes),
            Value::Module => Some(Tristate::Module),
            Value::No => Some(Tristate::No),
            Value::Text(_) => None,
        }
    }

    /// The value as Kconfig compares it with `=`: `y`, `m`, `n`, or the text without
    /// its quotes.
    fn as_compared(&self) -> String {
        match self {
            Value::Yes => "y".into(),
            Value::Module => "m".into(),
            Value::No => "n".into(),
            Value::Text(text) => unquote(text),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::No => f.write_str("not set"),
            Value::Text(text) => f.write_str(text),
        }
    }
}

/// Kconfig's three-valued logic: n < m < y.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tristate {
    No,
    Module,
    Yes,
}

impl Tristate {
    fn name(self) -> &'static str {
        match self {
            Tristate::No => "n",
            Tristate::Module => "m",
            Tristate::Yes => "y",
        }
    }
}

/// Where a setting came from: a file (or built-in fragment) name and a line number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `CONFIG_NAME=value` (the name without its prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: Value,
    pub origin: Origin,
}

impl Setting {
    /// The line as a `.config` file writes it.
    pub fn render(&self) -> String {
        match &self.value {
            Value::No => format!("# {PREFIX}{} is not set", self.name),
            value => format!("{PREFIX}{}={}", self.name, value_text(value)),
        }
    }
}

fn value_text(value: &Value) -> &str {
    match value {
        Value::Yes => "y",
        Value::Module => "m",
        Value::No => "n",
        Value::Text(text) => text,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{origin}: not a kernel configuration line: {line:?} (expected CONFIG_NAME=value or # CONFIG_NAME is not set)"
    )]
    Syntax { origin: Origin, line: String },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{}: no Kconfig at the top: not a kernel source tree", dir.display())]
    NotASourceTree { dir: PathBuf },
}

/// A `.config` file or a fragment: settings in file order, each name once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    settings: Vec<Setting>,
    index: HashMap<String, usize>,
}

/// A value a later fragment changed (merge_config.sh warns about these too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redefinition {
    pub name: String,
    pub previous: Setting,
    pub new: Setting,
}

impl fmt::Display for Redefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{} is redefined by {}: {} (was {} at {})",
            self.name, self.new.origin, self.new.value, self.previous.value, self.previous.origin
        )
    }
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// Parses `.config` text; `file` names it in errors and origins. Comments and blank
    /// lines are skipped; anything else that is not a setting is an error, so that a
    /// typo in a fragment (`CONFG_X=y`) is not silently ignored.
    pub fn parse(text: &str, file: &str) -> Result<Config, Error> {
        let mut config = Config::new();
        for (number, raw) in text.lines().enumerate() {
            let origin = Origin { file: file.to_owned(), line: number + 1 };
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let setting = if let Some(comment) = line.strip_prefix('#') {
                match comment.trim().strip_prefix(PREFIX).and_then(|rest| rest.strip_suffix(" is not set")) {
                    Some(name) if is_symbol_name(name) => (name, Value::No),
                    _ => continue,
                }
            } else {
                match line.strip_prefix(PREFIX).and_then(|rest| rest.split_once('=')) {
                    Some((name, value)) if is_symbol_name(name) && !value.is_empty() => (name, Value::parse(value)),
                    _ => return Err(Error::Syntax { origin, line: raw.to_owned() }),
                }
            };
            config.set(Setting { name: setting.0.to_owned(), value: setting.1, origin });
        }
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = fs::read_to_string(path).map_err(io_error("read", path))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Writes the configuration as a `.config` file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        fs::write(path, self.render()).map_err(io_error("write", path))?;
        Ok(())
    }

    /// The value of `name` (without the prefix).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.setting(name).map(|setting| &setting.value)
    }

    pub fn setting(&self, name: &str) -> Option<&Setting> {
        self.index.get(name).map(|&i| &self.settings[i])
    }

    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.settings.iter()
    }

    pub fn len(&self) -> usize {
        self.settings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }

    /// Sets a value. A name set before moves to the end, as merge_config.sh does: for
    /// a choice (say `KERNEL_ZSTD=y` over tinyconfig's `KERNEL_XZ=y`) the last `y` read
    /// wins, so the fragment's must come after the one it replaces.
    pub fn set(&mut self, setting: Setting) -> Option<Setting> {
        let previous = self.remove(&setting.name);
        self.index.insert(setting.name.clone(), self.settings.len());
        self.settings.push(setting);
        previous
    }

    fn remove(&mut self, name: &str) -> Option<Setting> {
        let i = self.index.remove(name)?;
        let removed = self.settings.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
        }
        Some(removed)
    }

    /// Merges `fragment` over this configuration; returns the values it changed that
    /// were set to something else before.
    pub fn merge(&mut self, fragment: &Config) -> Vec<Redefinition> {
        let mut changed = Vec::new();
        for setting in &fragment.settings {
            if let Some(previous) = self.set(setting.clone())
                && previous.value != setting.value
            {
                changed.push(Redefinition { name: setting.name.clone(), previous, new: setting.clone() });
            }
        }
        changed
    }

    /// The `.config` text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for setting in &self.settings {
            text.push_str(&setting.render());
            text.push('\n');
        }
        text
    }

    /// The kernel version in the header `make` writes (`# Linux/x86 6.1.192 Kernel
    /// Configuration`), as `major.minor` (the series).
    pub fn series_from_header(text: &str) -> Option<String> {
        text.lines().take(10).find_map(|line| {
            let rest = line.strip_prefix("# Linux/")?;
            let version = rest.split_whitespace().nth(1)?;
            series_of(version)
        })
    }
}

/// `major.minor` of a kernel version such as `6.1.192` or `6.6.0-rc1`.
pub fn series_of(version: &str) -> Option<String> {
    let mut parts = version.split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("{major}.{minor}"))
}

fn is_symbol_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn unquote(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------------
// Kconfig expressions

/// A Kconfig expression, as in `depends on A && (B || !C)` or `if X = "y"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Symbol(String),
    /// A quoted string.
    Text(String),
    /// `$(...)`: a macro only the real Kconfig evaluates; taken as satisfied, so it is
    /// never blamed.
    Macro(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, Comparison, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

impl Comparison {
    fn symbol(self) -> &'static str {
        match self {
            Comparison::Equal => "=",
            Comparison::NotEqual => "!=",
            Comparison::Less => "<",
            Comparison::LessEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterEqual => ">=",
        }
    }
}

impl Expr {
    /// Binding strength, for printing with the parentheses needed to read back the
    /// same tree: `||` < `&&` < `!` and comparisons < atoms.
    fn precedence(&self) -> u8 {
        match self {
            Expr::Or(..) => 1,
            Expr::And(..) => 2,
            Expr::Not(_) | Expr::Compare(..) => 3,
            Expr::Symbol(_) | Expr::Text(_) | Expr::Macro(_) => 4,
        }
    }

    fn write_operand(&self, f: &mut fmt::Formatter<'_>, at_least: u8) -> fmt::Result {
        if self.precedence() < at_least { write!(f, "({self})") } else { write!(f, "{self}") }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Symbol(name) => f.write_str(name),
            Expr::Text(text) => write!(f, "\"{text}\""),
            Expr::Macro(text) => f.write_str(text),
            Expr::Not(inner) => {
                f.write_str("!")?;
                inner.write_operand(f, 3)
            }
            // Left-associative: a right operand of the same kind needs parentheses.
            Expr::And(a, b) => {
                a.write_operand(f, 2)?;
                f.write_str(" && ")?;
                b.write_operand(f, 3)
            }
            Expr::Or(a, b) => {
                a.write_operand(f, 1)?;
                f.write_str(" || ")?;
                b.write_operand(f, 2)
            }
            Expr::Compare(a, op, b) => {
                a.write_operand(f, 4)?;
                write!(f, " {} ", op.symbol())?;
                b.write_operand(f, 4)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Text(String),
    Macro(String),
    And,
    Or,
    Not,
    Open,
    Close,
    Compare(Comparison),
}

fn tokenize(text: &str) -> Option<Vec<Token>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b'&' if bytes.get(i + 1) == Some(&b'&') => {
                tokens.push(Token::And);
                i += 2;
            }
            b'|' if bytes.get(i + 1) == Some(&b'|') => {
                tokens.push(Token::Or);
                i += 2;
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                tokens.push(Token::Compare(Comparison::NotEqual));
                i += 2;
            }
            b'!' => {
                tokens.push(Token::Not);
                i += 1;
            }
            b'=' => {
                tokens.push(Token::Compare(Comparison::Equal));
                i += 1;
            }
            b'<' | b'>' => {
                let equal = bytes.get(i + 1) == Some(&b'=');
                tokens.push(Token::Compare(match (c, equal) {
                    (b'<', false) => Comparison::Less,
                    (b'<', true) => Comparison::LessEqual,
                    (_, false) => Comparison::Greater,
                    (_, true) => Comparison::GreaterEqual,
                }));
                i += 1 + usize::from(equal);
            }
            b'"' | b'\'' => {
                let mut j = i + 1;
                let mut value = String::new();
                while j < bytes.len() && bytes[j] != c {
                    if bytes[j] == b'\\' && j + 1 < bytes.len() {
                        j += 1;
                    }
                    value.push(char::from(bytes[j]));
                    j += 1;
                }
                if j >= bytes.len() {
                    return None;
                }
                tokens.push(Token::Text(value));
                i = j + 1;
            }
            b'$' if bytes.get(i + 1) == Some(&b'(') => {
                let mut depth = 0;
                let mut j = i + 1;
                while j < bytes.len() {
                    match bytes[j] {
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= bytes.len() {
                    return None;
                }
                tokens.push(Token::Macro(text[i..=j].to_owned()));
                i = j + 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.' || c == b'/' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'-' | b'.' | b'/' | b'$'))
                {
                    i += 1;
                }
                tokens.push(Token::Word(text[start..i].to_owned()));
            }
            _ => return None,
        }
    }
    Some(tokens)
}

impl Expr {
    /// Parses an expression; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Expr> {
        let tokens = tokenize(text)?;
        let mut parser = ExprParser { tokens: &tokens, at: 0 };
        let expr = parser.or()?;
        (parser.at == tokens.len()).then_some(expr)
    }

    /// The expression split at its top-level `&&`s.
    pub fn conjuncts(&self) -> Vec<&Expr> {
        match self {
            Expr::And(a, b) => {
                let mut all = a.conjuncts();
                all.extend(b.conjuncts());
                all
            }
            other => vec![other],
        }
    }

    /// Every symbol named in the expression, once each, in order.
    pub fn symbols(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.collect_symbols(&mut out);
        let mut seen = HashSet::new();
        out.retain(|name| seen.insert(*name));
        out
    }

    fn collect_symbols<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Symbol(name) if !matches!(name.as_str(), "y" | "m" | "n") => out.push(name),
            Expr::Not(inner) => inner.collect_symbols(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(a, _, b) => {
                a.collect_symbols(out);
                b.collect_symbols(out);
            }
            _ => {}
        }
    }

    /// The expression's value under `config`, for the symbols `known` defines (other
    /// words are constants, as in Kconfig).
    pub fn eval(&self, config: &Config, known: &dyn Fn(&str) -> bool) -> Tristate {
        match self {
            Expr::Symbol(name) => match name.as_str() {
                "y" => Tristate::Yes,
                "n" => Tristate::No,
                // `m` is a module only where modules exist.
                "m" => {
                    if config.get("MODULES") == Some(&Value::Yes) {
                        Tristate::Module
                    } else {
                        Tristate::No
                    }
                }
                _ => config.get(name).and_then(Value::tristate).unwrap_or(Tristate::No),
            },
            // A quoted constant is a tristate when it spells one.
            Expr::Text(text) => match text.as_str() {
                "y" => Tristate::Yes,
                "m" => Expr::Symbol("m".into()).eval(config, known),
                _ => Tristate::No,
            },
            Expr::Macro(_) => Tristate::Yes,
            Expr::Not(inner) => match inner.eval(config, known) {
                Tristate::Yes => Tristate::No,
                Tristate::Module => Tristate::Module,
                Tristate::No => Tristate::Yes,
            },
            Expr::And(a, b) => a.eval(config, known).min(b.eval(config, known)),
            Expr::Or(a, b) => a.eval(config, known).max(b.eval(config, known)),
            Expr::Compare(a, op, b) => {
                let (a, b) = (a.string_value(config, known), b.string_value(config, known));
                let ordering = match (parse_number(&a), parse_number(&b)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    _ => a.cmp(&b),
                };
                let holds = match op {
                    Comparison::Equal => ordering.is_eq(),
                    Comparison::NotEqual => ordering.is_ne(),
                    Comparison::Less => ordering.is_lt(),
                    Comparison::LessEqual => ordering.is_le(),
                    Comparison::Greater => ordering.is_gt(),
                    Comparison::GreaterEqual => ordering.is_ge(),
                };
                if holds { Tristate::Yes } else { Tristate::No }
            }
        }
    }

    fn string_value(&self, config: &Config, known: &dyn Fn(&str) -> bool) -> String {
        match self {
            Expr::Symbol(name) if known(name) => config.get(name).map_or_else(|| "n".to_owned(), Value::as_compared),
            Expr::Symbol(name) | Expr::Text(name) | Expr::Macro(name) => name.clone(),
            other => other.eval(config, known).name().to_owned(),
        }
    }
}

fn parse_number(text: &str) -> Option<i64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

struct ExprParser<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl ExprParser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn or(&mut self) -> Option<Expr> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Some(left)
    }

    fn and(&mut self) -> Option<Expr> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Some(left)
    }

    fn unary(&mut self) -> Option<Expr> {
        if self.peek() == Some(&Token::Not) {
            self.at += 1;
            return Some(Expr::Not(Box::new(self.unary()?)));
        }
        let left = self.atom()?;
        if let Some(Token::Compare(op)) = self.peek() {
            let op = *op;
            self.at += 1;
            let right = self.atom()?;
            return Some(Expr::Compare(Box::new(left), op, Box::new(right)));
        }
        Some(left)
    }

    fn atom(&mut self) -> Option<Expr> {
        let token = self.peek()?.clone();
        self.at += 1;
        match token {
            Token::Word(word) => Some(Expr::Symbol(word)),
            Token::Text(text) => Some(Expr::Text(text)),
            Token::Macro(text) => Some(Expr::Macro(text)),
            Token::Open => {
                let inner = self.or()?;
                (self.peek() == Some(&Token::Close)).then(|| {
                    self.at += 1;
                    inner
                })
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// Kconfig files

/// One `config`/`menuconfig` entry of a symbol (a symbol may be defined in several
/// places; it is visible when any definition is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Definition {
    /// `file:line` of the `config` line, relative to the source tree.
    pub location: String,
    /// Every `depends on`, including those of the enclosing `if`, `menu` and `choice`
    /// blocks; all must hold.
    pub depends: Vec<Expr>,
    /// The conditions of its prompts (`None`: a prompt without `if`); empty when the
    /// symbol has no prompt, so only `select` or its default can set it.
    pub prompts: Vec<Option<Expr>>,
    /// Inside a `choice` block.
    pub in_choice: bool,
}

/// A `select` of a symbol: who selects it, and under which condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Select {
    pub by: String,
    pub condition: Option<Expr>,
}

/// What the `Kconfig` files of a source tree say about dependencies.
#[derive(Clone, Debug, Default)]
pub struct Kconfig {
    definitions: HashMap<String, Vec<Definition>>,
    selects: HashMap<String, Vec<Select>>,
    /// `source` lines whose file could not be read (a tree with files removed, or a
    /// macro this reader does not expand).
    pub unreadable: Vec<String>,
}

/// Which architecture's `arch/*/Kconfig` to read: `SRCARCH` and `ARCH` as Kbuild sets
/// them for an x86_64 build.
const SRCARCH: &str = "x86";
const ARCH: &str = "x86_64";

impl Kconfig {
    /// Reads `<tree>/Kconfig` and everything it sources, for x86.
    pub fn load(tree: &Path) -> Result<Kconfig, Error> {
        if !tree.join("Kconfig").is_file() {
            return Err(Error::NotASourceTree { dir: tree.to_owned() });
        }
        let mut reader =
            KconfigReader { tree, kconfig: Kconfig::default(), blocks: Vec::new(), visited: HashSet::new() };
        reader.file(Path::new("Kconfig"))?;
        Ok(reader.kconfig)
    }

    /// Parses Kconfig text alone (no `source`), for tests and single files.
    pub fn parse(text: &str, file: &str) -> Kconfig {
        let mut reader = KconfigReader {
            tree: Path::new(""),
            kconfig: Kconfig::default(),
            blocks: Vec::new(),
            visited: HashSet::new(),
        };
        reader.text(text, file, Path::new(""));
        reader.kconfig
    }

    pub fn definitions(&self, name: &str) -> &[Definition] {
        self.definitions.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn selected_by(&self, name: &str) -> &[Select] {
        self.selects.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn knows(&self, name: &str) -> bool {
        self.definitions.contains_key(name)
    }

    pub fn symbol_count(&self) -> usize {
        self.definitions.len()
    }
}

struct Block {
    depends: Vec<Expr>,
    choice: bool,
}

/// What the `depends on`, prompt and `select` lines after a line apply to.
#[derive(Clone)]
enum Current {
    None,
    /// The last definition of this symbol.
    Symbol(String),
    /// The innermost `menu` or `choice` header.
    Block,
}

struct KconfigReader<'a> {
    tree: &'a Path,
    kconfig: Kconfig,
    blocks: Vec<Block>,
    visited: HashSet<PathBuf>,
}

impl KconfigReader<'_> {
    fn file(&mut self, relative: &Path) -> Result<(), Error> {
        let path = self.tree.join(relative);
        if !self.visited.insert(path.clone()) {
            return Ok(());
        }
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        let dir = relative.parent().unwrap_or(Path::new("")).to_owned();
        self.text(&text, &relative.display().to_string(), &dir);
        Ok(())
    }

    fn text(&mut self, text: &str, file: &str, dir: &Path) {
        let mut lines = LogicalLines::new(text);
        let mut current = Current::None;
        while let Some((first_line, line)) = lines.next() {
            let line = strip_comment(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (keyword, rest) = line.split_once([' ', '\t']).map_or((line, ""), |(k, r)| (k, r.trim()));
            if keyword == "help" || keyword == "---help---" {
                lines.skip_help();
                continue;
            }
            let location = format!("{file}:{first_line}");
            self.statement(keyword, rest, location, dir, &mut current);
        }
    }

    /// One statement (a logical line past its keyword); `current` is what the lines
    /// before it defined or opened.
    fn statement(&mut self, keyword: &str, rest: &str, location: String, dir: &Path, current: &mut Current) {
        match keyword {
            "config" | "menuconfig" => {
                self.define(rest, location);
                *current = Current::Symbol(rest.to_owned());
            }
            "menu" | "choice" => {
                self.blocks.push(Block { depends: Vec::new(), choice: keyword == "choice" });
                *current = Current::Block;
            }
            "if" => {
                let condition = Expr::parse(rest).unwrap_or(Expr::Macro(rest.to_owned()));
                self.blocks.push(Block { depends: vec![condition], choice: false });
                *current = Current::None;
            }
            "endmenu" | "endchoice" | "endif" => {
                self.blocks.pop();
                *current = Current::None;
            }
            "comment" | "mainmenu" => *current = Current::None,
            "source" | "rsource" | "osource" | "orsource" => {
                if let Some(name) = quoted(rest) {
                    self.source(keyword, &name, &location, dir);
                    *current = Current::None;
                }
            }
            "depends" => {
                if let Some(expr) = rest.strip_prefix("on").map(str::trim) {
                    self.depends_on(expr, current);
                }
            }
            "bool" | "tristate" | "string" | "int" | "hex" | "prompt" | "boolean" => {
                if let Current::Symbol(symbol) = current {
                    self.prompt(rest, symbol);
                }
            }
            "select" => {
                if let Current::Symbol(symbol) = current {
                    self.select(rest, symbol);
                }
            }
            _ => {}
        }
    }

    /// A new definition of `symbol`, under the dependencies of the enclosing blocks.
    fn define(&mut self, symbol: &str, location: String) {
        let definition = Definition {
            location,
            depends: self.blocks.iter().flat_map(|b| b.depends.iter().cloned()).collect(),
            prompts: Vec::new(),
            in_choice: self.blocks.last().is_some_and(|b| b.choice),
        };
        self.kconfig.definitions.entry(symbol.to_owned()).or_default().push(definition);
    }

    /// Reads a sourced file; one that cannot be read is noted, except for the optional
    /// `osource` and `orsource`.
    fn source(&mut self, keyword: &str, name: &str, location: &str, dir: &Path) {
        let name = name.replace("$(SRCARCH)", SRCARCH).replace("$(ARCH)", ARCH);
        let relative = if keyword.ends_with("rsource") { dir.join(&name) } else { PathBuf::from(&name) };
        if name.contains("$(") || self.tree.as_os_str().is_empty() {
            self.kconfig.unreadable.push(name);
        } else if let Err(err) = self.file(&relative)
            && !keyword.starts_with('o')
        {
            log::debug!("{location}: {err}");
            self.kconfig.unreadable.push(name);
        }
    }

    /// A `depends on` of the current symbol or of the innermost `menu` or `choice`.
    fn depends_on(&mut self, expr: &str, current: &Current) {
        let expr = Expr::parse(expr).unwrap_or_else(|| Expr::Macro(expr.to_owned()));
        match current {
            Current::Symbol(symbol) => {
                if let Some(definition) = self.last_definition(symbol) {
                    definition.depends.push(expr);
                }
            }
            Current::Block => {
                if let Some(block) = self.blocks.last_mut() {
                    block.depends.push(expr);
                }
            }
            Current::None => {}
        }
    }

    /// A prompt of `symbol` (a type with a quoted text, or `prompt`), with its `if`.
    fn prompt(&mut self, rest: &str, symbol: &str) {
        let Some((_, after)) = quoted_and_rest(rest) else { return };
        let condition = after
            .trim()
            .strip_prefix("if")
            .map(str::trim)
            .map(|c| Expr::parse(c).unwrap_or_else(|| Expr::Macro(c.to_owned())));
        if let Some(definition) = self.last_definition(symbol) {
            definition.prompts.push(condition);
        }
    }

    /// `select TARGET [if CONDITION]` of `symbol`.
    fn select(&mut self, rest: &str, symbol: &str) {
        let (target, condition) = match rest.split_once(" if ") {
            Some((target, condition)) => (target.trim(), Expr::parse(condition.trim())),
            None => (rest, None),
        };
        self.kconfig.selects.entry(target.to_owned()).or_default().push(Select { by: symbol.to_owned(), condition });
    }

    fn last_definition(&mut self, symbol: &str) -> Option<&mut Definition> {
        self.kconfig.definitions.get_mut(symbol).and_then(|all| all.last_mut())
    }
}

/// The logical lines of a Kconfig file, with their first line's number: lines ending in
/// `\` joined to the next, help texts skipped.
struct LogicalLines<'a> {
    raw: std::iter::Enumerate<std::str::Lines<'a>>,
    /// Inside a help text: the indentation of its first line; `Some(None)` right after
    /// `help`.
    help: Option<Option<usize>>,
}

impl LogicalLines<'_> {
    fn new(text: &str) -> LogicalLines<'_> {
        LogicalLines { raw: text.lines().enumerate(), help: None }
    }

    /// Skips the help text after a `help` line.
    fn skip_help(&mut self) {
        self.help = Some(None);
    }
}

impl Iterator for LogicalLines<'_> {
    type Item = (usize, String);

    fn next(&mut self) -> Option<(usize, String)> {
        let mut pending = String::new();
        let mut first_line = 0;
        for (number, raw) in self.raw.by_ref() {
            if in_help(&mut self.help, raw) {
                continue;
            }
            if pending.is_empty() {
                first_line = number + 1;
            }
            if let Some(continued) = raw.strip_suffix('\\') {
                pending.push_str(continued);
                pending.push(' ');
                continue;
            }
            pending.push_str(raw);
            return Some((first_line, pending));
        }
        None
    }
}

/// Whether `raw` belongs to the help text being skipped (`help` as in
/// [`LogicalLines`]); the first line indented less than the text's first ends it.
fn in_help(help: &mut Option<Option<usize>>, raw: &str) -> bool {
    let Some(indent) = *help else { return false };
    if raw.trim().is_empty() {
        return true;
    }
    let width = indentation(raw);
    match indent {
        None => {
            *help = Some(Some(width));
            true
        }
        Some(first) if width >= first => true,
        Some(_) => {
            *help = None;
            false
        }
    }
}

fn indentation(line: &str) -> usize {
    let mut width = 0;
    for c in line.chars() {
        match c {
            ' ' => width += 1,
            '\t' => width = (width / 8 + 1) * 8,
            _ => break,
        }
    }
    width
}

/// The line without a `#` comment outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) => return &line[..i],
            _ => {}
        }
    }
    line
}

fn quoted(text: &str) -> Option<String> {
    quoted_and_rest(text).map(|(inside, _)| inside)
}

/// A leading quoted string and what follows it.
fn quoted_and_rest(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let body = &text[1..];
    let end = body.find(quote)?;
    Some((body[..end].to_owned(), &body[end + 1..]))
}

// ---------------------------------------------------------------------------------
// Checking a resolved configuration against what was asked

/// An option the resolved configuration did not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// What a fragment asked for, and where.
    pub wanted: Setting,
    /// What the `.config` has (`None`: not there at all, which Kconfig does for options
    /// whose dependencies are unmet).
    pub got: Option<Value>,
    pub reasons: Vec<Reason>,
}

/// Why Kconfig did not keep a value, as far as its files tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No `config` entry for it in this kernel: misspelt, renamed or removed (an
    /// adjustment for the series is missing).
    Unknown,
    /// A `depends on` (its own or an enclosing block's) evaluates below the wanted
    /// value; the values of the symbols it names.
    Depends { expr: Expr, value: Tristate, symbols: Vec<(String, Option<Value>)> },
    /// It has no prompt: only a `select` (or its default) sets it.
    NoPrompt { selected_by: Vec<String> },
    /// Its prompt is hidden by this condition, so its default applies.
    PromptHidden { condition: Expr, symbols: Vec<(String, Option<Value>)> },
    /// Selected by these, which are set: it cannot be turned off.
    SelectedBy { by: Vec<String> },
    /// Another option of its `choice` was chosen.
    Choice,
    /// Nothing in the Kconfig files stops it: the value was never applied (a
    /// configuration not made from these fragments, or edited afterwards).
    NotApplied,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Options compared.
    pub checked: usize,
    pub lost: Vec<Lost>,
    /// Whether the `Kconfig` files were read (so reasons could be given).
    pub explained: bool,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
    }
}

/// Whether `got` keeps `wanted`: `is not set` is kept by an absent option.
fn kept(wanted: &Value, got: Option<&Value>) -> bool {
    match (wanted, got) {
        (Value::No, None | Some(Value::No)) => true,
        (Value::Text(a), Some(Value::Text(b))) => {
            unquote(a) == unquote(b) || parse_number(a).is_some_and(|n| parse_number(b) == Some(n))
        }
        (wanted, Some(got)) => wanted == got,
        (_, None) => false,
    }
}

/// Compares every option of `wanted` (the merged fragments) with the resolved
/// `config`; with `kconfig`, says why each lost option was lost.
pub fn check(wanted: &Config, config: &Config, kconfig: Option<&Kconfig>) -> Report {
    let mut report = Report { checked: wanted.len(), lost: Vec::new(), explained: kconfig.is_some() };
    for setting in wanted.settings() {
        let got = config.get(&setting.name);
        if kept(&setting.value, got) {
            continue;
        }
        let reasons = kconfig.map(|k| explain(setting, config, k)).unwrap_or_default();
        report.lost.push(Lost { wanted: setting.clone(), got: got.cloned(), reasons });
    }
    report
}

fn symbol_values(expr: &Expr, config: &Config, kconfig: &Kconfig) -> Vec<(String, Option<Value>)> {
    expr.symbols()
        .into_iter()
        .filter(|name| kconfig.knows(name))
        .map(|name| (name.to_owned(), config.get(name).cloned()))
        .collect()
}

fn explain(wanted: &Setting, config: &Config, kconfig: &Kconfig) -> Vec<Reason> {
    let definitions = kconfig.definitions(&wanted.name);
    if definitions.is_empty() {
        return vec![Reason::Unknown];
    }
    let known = |name: &str| kconfig.knows(name);
    let mut reasons = Vec::new();
    if wanted.value == Value::No {
        let by: Vec<String> = kconfig
            .selected_by(&wanted.name)
            .iter()
            .filter(|s| config.get(&s.by).is_some_and(|v| matches!(v, Value::Yes | Value::Module)))
            .filter(|s| s.condition.as_ref().is_none_or(|c| c.eval(config, &known) > Tristate::No))
            .map(|s| s.by.clone())
            .collect();
        if !by.is_empty() {
            reasons.push(Reason::SelectedBy { by });
        }
        return reasons;
    }
    // The level the wanted value needs from its dependencies: y for built in (and for
    // strings and numbers, whose options are visible only when their dependencies hold).
    let need = if wanted.value == Value::Module { Tristate::Module } else { Tristate::Yes };
    let mut seen = HashSet::new();
    for definition in definitions {
        for expr in definition.depends.iter().flat_map(Expr::conjuncts) {
            let value = expr.eval(config, &known);
            if value < need && seen.insert(expr.to_string()) {
                reasons.push(Reason::Depends {
                    expr: expr.clone(),
                    value,
                    symbols: symbol_values(expr, config, kconfig),
                });
            }
        }
    }
    if !reasons.is_empty() {
        return reasons;
    }
    if definitions.iter().all(|d| d.prompts.is_empty()) {
        let selected_by = kconfig.selected_by(&wanted.name).iter().map(|s| s.by.clone()).collect();
        return vec![Reason::NoPrompt { selected_by }];
    }
    let visible = definitions
        .iter()
        .flat_map(|d| &d.prompts)
        .any(|c| c.as_ref().is_none_or(|c| c.eval(config, &known) > Tristate::No));
    if !visible {
        for condition in definitions.iter().flat_map(|d| &d.prompts).flatten() {
            reasons.push(Reason::PromptHidden {
                condition: condition.clone(),
                symbols: symbol_values(condition, config, kconfig),
            });
        }
        return reasons;
    }
    if definitions.iter().any(|d| d.in_choice) {
        reasons.push(Reason::Choice);
    } else {
        reasons.push(Reason::NotApplied);
    }
    reasons
}

fn describe_symbols(symbols: &[(String, Option<Value>)]) -> String {
    symbols
        .iter()
        .map(|(name, value)| {
            format!("{name}={}", value.as_ref().map_or_else(|| "n".to_owned(), |v| value_text(v).to_owned()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unknown => f.write_str("this kernel has no such option (misspelt, or renamed or removed in this series: see kernel-configs/README.md)"),
            Reason::Depends { expr, value, symbols } => {
                write!(f, "depends on {expr}, which is {}", value.name())?;
                if !symbols.is_empty() {
                    write!(f, " ({})", describe_symbols(symbols))?;
                }
                Ok(())
            }
            Reason::NoPrompt { selected_by } if selected_by.is_empty() => {
                f.write_str("it has no prompt and nothing selects it: it cannot be set")
            }
            Reason::NoPrompt { selected_by } => {
                write!(f, "it has no prompt: only selected, by {}; ask for one of those", selected_by.join(", "))
            }
            Reason::PromptHidden { condition, symbols } => {
                write!(f, "its prompt is hidden unless {condition}")?;
                if !symbols.is_empty() {
                    write!(f, " ({})", describe_symbols(symbols))?;
                }
                f.write_str(", so its default applies")
            }
            Reason::SelectedBy { by } => write!(f, "selected by {}, which cannot be undone", by.join(", ")),
            Reason::Choice => f.write_str("another option of its choice was picked (ask for one option per choice)"),
            Reason::NotApplied => f.write_str(
                "its dependencies hold and it can be set: this configuration was not made from these fragments",
            ),
        }
    }
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = self.got.as_ref().map_or_else(
            || "absent".to_owned(),
            |v| match v {
                Value::No => "not set".to_owned(),
                v => value_text(v).to_owned(),
            },
        );
        let wanted = match &self.wanted.value {
            Value::No => "not set".to_owned(),
            v => value_text(v).to_owned(),
        };
        write!(f, "{PREFIX}{}: wanted {wanted}, got {got} ({})", self.wanted.name, self.wanted.origin)
    }
}

impl fmt::Display for Report {
    /// One line per lost option, its reasons indented below it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for lost in &self.lost {
            writeln!(f, "{lost}")?;
            for reason in &lost.reasons {
                writeln!(f, "    {reason}")?;
            }
            if lost.reasons.is_empty() && !self.explained {
                writeln!(f, "    (pass --source with the kernel tree to see why)")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.config").unwrap()
    }

    #[test]
    fn parse_table() {
        let c = config(
            "#\n# Automatically generated\n#\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n\
             CONFIG_D=\"hello world\"\nCONFIG_E=0x1000\nCONFIG_F=4\nCONFIG_G=n\n  # a comment\n",
        );
        assert_eq!(c.get("A"), Some(&Value::Yes));
        assert_eq!(c.get("B"), Some(&Value::Module));
        assert_eq!(c.get("C"), Some(&Value::No));
        assert_eq!(c.get("D"), Some(&Value::Text("\"hello world\"".into())));
        assert_eq!(c.get("E"), Some(&Value::Text("0x1000".into())));
        assert_eq!(c.get("G"), Some(&Value::No));
        assert_eq!(c.setting("F").unwrap().origin, Origin { file: "test.config".into(), line: 9 });
        assert_eq!(c.len(), 7);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        for bad in ["CONFG_A=y", "CONFIG_A", "CONFIG_A=", "CONFIG_A B=y", "random words"] {
            let err = Config::parse(&format!("CONFIG_OK=y\n{bad}\n"), "frag.config").unwrap_err();
            assert!(err.to_string().starts_with("frag.config:2: not a kernel configuration line"), "{bad}: {err}");
        }
    }

    #[test]
    fn merge_moves_overrides_to_the_end_and_reports_them() {
        let mut base = config("CONFIG_KERNEL_XZ=y\n# CONFIG_KERNEL_ZSTD is not set\nCONFIG_X=y\n");
        let fragment = Config::parse("CONFIG_KERNEL_ZSTD=y\n# CONFIG_KERNEL_XZ is not set\nCONFIG_X=y\n", "f").unwrap();
        let changed = base.merge(&fragment);
        assert_eq!(
            base.render(),
            "CONFIG_KERNEL_ZSTD=y\n# CONFIG_KERNEL_XZ is not set\nCONFIG_X=y\n",
            "the fragment's lines come last"
        );
        let names: Vec<&str> = changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["KERNEL_ZSTD", "KERNEL_XZ"], "an unchanged value is no redefinition");
        assert_eq!(changed[0].to_string(), "CONFIG_KERNEL_ZSTD is redefined by f:1: y (was not set at test.config:2)");
    }

    #[test]
    fn series_from_the_config_header() {
        let header = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.192 Kernel Configuration\n#\n";
        assert_eq!(Config::series_from_header(header).as_deref(), Some("6.1"));
        assert_eq!(series_of("5.10.0-rc3").as_deref(), Some("5.10"));
        assert_eq!(series_of("6"), None);
        assert_eq!(Config::series_from_header("CONFIG_A=y\n"), None);
    }

    #[test]
    fn expressions_parse_and_print_back() {
        let cases = [
            ("A", "A"),
            ("A && B || C", "A && B || C"),
            ("A && (B || C)", "A && (B || C)"),
            ("!(A || B) && !C", "!(A || B) && !C"),
            ("X86_64 = \"y\"", "X86_64 = \"y\""),
            ("$(cc-option,-mfoo) && BAR", "$(cc-option,-mfoo) && BAR"),
            ("NR >= 2 && HZ != 100", "NR >= 2 && HZ != 100"),
        ];
        for (text, printed) in cases {
            let expr = Expr::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(expr.to_string(), printed);
            assert_eq!(Expr::parse(printed), Some(expr), "{text}");
        }
        for bad in ["A &&", "(A", "A B", "&& A"] {
            assert_eq!(Expr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tristate_evaluation() {
        let c = config("CONFIG_Y=y\nCONFIG_M=m\n# CONFIG_N is not set\nCONFIG_S=\"x86\"\nCONFIG_I=4\n");
        let known = |name: &str| ["Y", "M", "N", "S", "I", "ABSENT"].contains(&name);
        let eval = |text: &str| Expr::parse(text).unwrap().eval(&c, &known);
        let cases = [
            ("Y", Tristate::Yes),
            ("M", Tristate::Module),
            ("N", Tristate::No),
            ("ABSENT", Tristate::No),
            ("Y && M", Tristate::Module),
            ("N || M", Tristate::Module),
            ("!M", Tristate::Module),
            ("!N && Y", Tristate::Yes),
            ("S = \"x86\"", Tristate::Yes),
            ("S = x86", Tristate::Yes),
            ("S != \"x86\"", Tristate::No),
            ("I >= 2", Tristate::Yes),
            ("I < 2", Tristate::No),
            ("N = n", Tristate::Yes),
            ("$(success,true)", Tristate::Yes),
            // `m` is a module only where modules exist.
            ("m", Tristate::No),
        ];
        for (text, expected) in cases {
            assert_eq!(eval(text), expected, "{text}");
        }
    }

    const KCONFIG: &str = r#"
mainmenu "Test"
config NET
	bool "Networking support"
	help
	  depends on NOTHING: help text is not a dependency.

	  Still help.

if NET
config INET
	bool "TCP/IP"

menu "Sockets"
	depends on INET
config VSOCK
	tristate "vsock" if EXPERT
	depends on VIRTIO && \
		   PCI
	select NET_CORE
endmenu
endif

config NET_CORE
	bool

config PCI
	bool "PCI"

config VIRTIO
	tristate

config VIRTIO_PCI
	tristate "virtio pci" # a comment
	depends on PCI
	select VIRTIO

config EXPERT
	bool "expert"

choice
	prompt "Compression"
config KERNEL_GZIP
	bool "gzip"
config KERNEL_ZSTD
	bool "zstd"
endchoice
"#;

    #[test]
    fn kconfig_blocks_give_their_dependencies() {
        let k = Kconfig::parse(KCONFIG, "Kconfig");
        let vsock = &k.definitions("VSOCK")[0];
        let deps: Vec<String> = vsock.depends.iter().map(Expr::to_string).collect();
        assert_eq!(deps, ["NET", "INET", "VIRTIO && PCI"]);
        assert_eq!(vsock.prompts, [Some(Expr::Symbol("EXPERT".into()))]);
        assert_eq!(vsock.location, "Kconfig:16");
        assert!(k.definitions("NET")[0].depends.is_empty(), "help text is skipped");
        assert!(k.definitions("VIRTIO")[0].prompts.is_empty());
        assert_eq!(k.selected_by("VIRTIO")[0].by, "VIRTIO_PCI");
        assert_eq!(k.selected_by("NET_CORE")[0].by, "VSOCK");
        assert!(k.definitions("KERNEL_ZSTD")[0].in_choice);
        assert!(!k.definitions("PCI")[0].in_choice);
        assert_eq!(k.symbol_count(), 10);
    }

    /// The regression this module exists for: an option dropped by a missing
    /// dependency is reported, and so is the dependency.
    #[test]
    fn an_option_dropped_by_a_missing_dependency_names_the_dependency() {
        let k = Kconfig::parse(KCONFIG, "Kconfig");
        let wanted = Config::parse("CONFIG_NET=y\nCONFIG_VSOCK=y\nCONFIG_EXPERT=y\n", "base.config").unwrap();
        // What olddefconfig makes of it without PCI and INET: VSOCK is gone.
        let resolved = config("CONFIG_NET=y\n# CONFIG_INET is not set\n# CONFIG_PCI is not set\nCONFIG_EXPERT=y\n");
        let report = check(&wanted, &resolved, Some(&k));
        assert_eq!(report.checked, 3);
        assert_eq!(report.lost.len(), 1, "{report}");
        let lost = &report.lost[0];
        assert_eq!(lost.wanted.name, "VSOCK");
        assert_eq!(lost.got, None);
        assert_eq!(
            lost.reasons,
            [
                Reason::Depends {
                    expr: Expr::Symbol("INET".into()),
                    value: Tristate::No,
                    symbols: vec![("INET".into(), Some(Value::No))]
                },
                Reason::Depends {
                    expr: Expr::Symbol("VIRTIO".into()),
                    value: Tristate::No,
                    symbols: vec![("VIRTIO".into(), None)]
                },
                Reason::Depends {
                    expr: Expr::Symbol("PCI".into()),
                    value: Tristate::No,
                    symbols: vec![("PCI".into(), Some(Value::No))]
                },
            ]
        );
        assert_eq!(
            report.to_string(),
            "CONFIG_VSOCK: wanted y, got absent (base.config:2)\n    depends on INET, which is n (INET=n)\n    \
             depends on VIRTIO, which is n (VIRTIO=n)\n    depends on PCI, which is n (PCI=n)\n"
        );
        // Without the Kconfig files the loss is still reported, with a hint.
        let bare = check(&wanted, &resolved, None);
        assert_eq!(bare.lost.len(), 1);
        assert!(bare.to_string().contains("pass --source"), "{bare}");
    }

    #[test]
    fn reasons_table() {
        let k = Kconfig::parse(KCONFIG, "Kconfig");
        let resolved = config(
            "CONFIG_NET=y\nCONFIG_INET=y\nCONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO=y\n\
             # CONFIG_EXPERT is not set\nCONFIG_KERNEL_GZIP=y\n# CONFIG_KERNEL_ZSTD is not set\nCONFIG_VSOCK=m\n",
        );
        let reason = |fragment: &str| {
            let report = check(&config(fragment), &resolved, Some(&k));
            assert_eq!(report.lost.len(), 1, "{fragment}: {report}");
            report.lost[0].reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        };
        assert!(reason("CONFIG_NO_SUCH=y").starts_with("this kernel has no such option"));
        assert_eq!(reason("CONFIG_NET_CORE=y"), "it has no prompt: only selected, by VSOCK; ask for one of those");
        assert_eq!(reason("CONFIG_VSOCK=y"), "its prompt is hidden unless EXPERT (EXPERT=n), so its default applies");
        assert_eq!(reason("# CONFIG_VIRTIO is not set"), "selected by VIRTIO_PCI, which cannot be undone");
        assert!(reason("CONFIG_KERNEL_ZSTD=y").starts_with("another option of its choice"));
        // Values that were kept are not reported, whatever their spelling.
        let kept = config("CONFIG_NET=y\n# CONFIG_ABSENT is not set\nCONFIG_EXPERT=n\n");
        assert!(check(&kept, &resolved, Some(&k)).is_ok());
    }

    #[test]
    fn text_values_compare_by_meaning() {
        assert!(kept(&Value::Text("\"-appliance\"".into()), Some(&Value::Text("\"-appliance\"".into()))));
        assert!(kept(&Value::Text("0x10".into()), Some(&Value::Text("16".into()))));
        assert!(!kept(&Value::Text("4".into()), Some(&Value::Text("2".into()))));
        assert!(!kept(&Value::Yes, Some(&Value::Module)));
        assert!(!kept(&Value::Yes, None));
    }

    /// `source` paths are relative to the top of the tree, `rsource` ones to the file's
    /// directory (a reader that joined every `source` to the file's directory lost
    /// most of the kernel's options).
    #[test]
    fn source_is_relative_to_the_top_and_rsource_to_the_file() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        fs::create_dir_all(root.join("net/sched")).unwrap();
        fs::create_dir_all(root.join("arch/x86")).unwrap();
        fs::write(root.join("Kconfig"), "source \"net/Kconfig\"\nsource \"arch/$(SRCARCH)/Kconfig\"\n").unwrap();
        fs::write(
            root.join("net/Kconfig"),
            "menuconfig NET\n\tbool \"net\"\nif NET\nsource \"net/sched/Kconfig\"\nrsource \"Kconfig.local\"\nendif\n",
        )
        .unwrap();
        fs::write(root.join("net/sched/Kconfig"), "config NET_SCHED\n\tbool \"sched\"\n").unwrap();
        fs::write(root.join("net/Kconfig.local"), "config NET_LOCAL\n\tbool \"local\"\n").unwrap();
        fs::write(root.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\nosource \"arch/x86/absent\"\n").unwrap();
        let k = Kconfig::load(root).unwrap();
        assert!(k.unreadable.is_empty(), "{:?}", k.unreadable);
        assert_eq!(k.definitions("NET_SCHED")[0].depends, [Expr::Symbol("NET".into())]);
        assert_eq!(k.definitions("NET_SCHED")[0].location, "net/sched/Kconfig:1");
        assert!(k.knows("NET_LOCAL") && k.knows("X86"));
        assert!(matches!(Kconfig::load(&root.join("arch")), Err(Error::NotASourceTree { .. })));
    }

    proptest! {
        /// Rendering and parsing are inverse: every setting survives a round trip.
        #[test]
        fn render_parse_round_trip(
            settings in proptest::collection::vec(
                ("[A-Z][A-Z0-9_]{0,20}", prop_oneof![
                    Just(Value::Yes), Just(Value::Module), Just(Value::No),
                    "[0-9]{1,5}".prop_map(Value::Text),
                    "[a-z -]{0,12}".prop_map(|s| Value::Text(format!("\"{s}\""))),
                ]),
                0..30,
            )
        ) {
            let mut c = Config::new();
            for (i, (name, value)) in settings.into_iter().enumerate() {
                c.set(Setting { name, value, origin: Origin { file: "x".into(), line: i + 1 } });
            }
            let back = Config::parse(&c.render(), "x").unwrap();
            let pairs = |c: &Config| c.settings().map(|s| (s.name.clone(), s.value.clone())).collect::<Vec<_>>();
            prop_assert_eq!(pairs(&back), pairs(&c));
        }

        /// Any line either parses or is reported with its line number; never a panic.
        #[test]
        fn arbitrary_lines_never_panic(text in "[ -~\n]{0,200}") {
            match Config::parse(&text, "f") {
                Ok(_) => {}
                Err(err) => prop_assert!(err.to_string().starts_with("f:"), "{}", err),
            }
        }

        #[test]
        fn arbitrary_expressions_never_panic(text in "[A-Z_!&|()=<> \"$]{0,40}") {
            if let Some(expr) = Expr::parse(&text) {
                prop_assert_eq!(Expr::parse(&expr.to_string()), Some(expr.clone()));
            }
        }
    }
}
