//! Finding tracefs and reading tracepoint `format` files. The tracepoint programs receive the raw
//! trace record, whose field offsets are only defined by `<tracefs>/events/<group>/<name>/format`
//! and have changed between kernels, so the agent reads them at start-up instead of trusting a
//! compiled-in struct layout. This module owns locating (and, as a last resort, mounting) tracefs,
//! parsing format files into [`Format`], and the errors that tell an operator what is missing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";
/// Where tracefs appears on kernels older than 4.1 and on systems that only mount debugfs.
const LEGACY_TRACEFS: &str = "/sys/kernel/debug/tracing";

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    /// The C type as the format file declares it, with any array suffix attached
    /// (`"__u8[4]"`, `"const void *"`, `"__data_loc char[]"`).
    pub ty: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed `format` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<Field>,
}

impl Format {
    /// The named field, or an error naming the tracepoint and field so the operator can see that
    /// the kernel's record layout differs from what connmon expects.
    pub fn field(&self, name: &str) -> Result<&Field> {
        self.fields.iter().find(|f| f.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
            anyhow!(
                "tracepoint {} has no field {name} on this kernel (it has: {}): this kernel's tracepoint layout is not supported",
                self.name,
                have.join(", ")
            )
        })
    }
}

fn has_events(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// The errno's symbolic name where it has one, else the error's text.
fn errno_name(err: &std::io::Error) -> String {
    err.raw_os_error().and_then(crate::errno::name).map_or_else(|| err.to_string(), str::to_owned)
}

fn mount_tracefs(dir: &Path) -> std::io::Result<()> {
    let target =
        CString::new(dir.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data may be null.
    let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Returns the tracefs directory to use. Only the default location is ever mounted: an explicitly
/// configured directory that lacks `events/` is a configuration mistake, and mounting over it
/// would hide whatever the operator meant to point at.
pub fn ensure_mounted(dir: &Path) -> Result<PathBuf> {
    if has_events(dir) {
        return Ok(dir.to_path_buf());
    }
    if dir != Path::new(DEFAULT_TRACEFS) {
        bail!(
            "{} has no events/ directory, so it is not a tracefs mount: point connmon at the directory where tracefs is mounted (usually {DEFAULT_TRACEFS})",
            dir.display()
        );
    }
    let legacy = Path::new(LEGACY_TRACEFS);
    if has_events(legacy) {
        return Ok(legacy.to_path_buf());
    }
    let result = mount_tracefs(dir);
    // Someone else (systemd, a parallel agent) may have mounted it meanwhile (EBUSY); what matters
    // is whether events/ is there now.
    if has_events(dir) {
        if result.is_ok() {
            // In a container this mount is the agent's own (its mount namespace), not the host's.
            log::info!("tracefs was not mounted at {DEFAULT_TRACEFS}: mounted it");
        }
        return Ok(dir.to_path_buf());
    }
    match result {
        Err(e) => bail!(
            "tracefs is not mounted at {DEFAULT_TRACEFS} and mounting it failed ({}): run `mount -t tracefs nodev {DEFAULT_TRACEFS}` as root",
            errno_name(&e)
        ),
        Ok(()) => bail!(
            "mounted tracefs at {DEFAULT_TRACEFS} but it has no events/ directory: this kernel was built without tracepoint support (CONFIG_TRACEPOINTS)"
        ),
    }
}

/// Splits a C declaration like `const void * skaddr` or `__u8 saddr[4]` into (name, type), with any
/// array suffix moved onto the type.
fn split_decl(decl: &str) -> Option<(String, String)> {
    let decl = decl.trim();
    let (base, array) = match decl.strip_suffix(']') {
        Some(rest) => {
            let open = rest.rfind('[')?;
            (&decl[..open], &decl[open..])
        }
        None => (decl, ""),
    };
    let base = base.trim_end();
    // The name starts after the last character that cannot be in one, which may be multi-byte.
    let start = base
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let name = &base[start..];
    let ty = base[..start].trim_end();
    if name.is_empty() || ty.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((name.to_owned(), format!("{ty}{array}")))
}

/// Parses one `field:...;\toffset:N;\tsize:N;\tsigned:N;` line.
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':')?;
        match key.trim() {
            "field" => decl = Some(split_decl(value)?),
            "offset" => offset = Some(value.trim().parse::<u32>().ok()?),
            "size" => size = Some(value.trim().parse::<u32>().ok()?),
            "signed" => signed = Some(value.trim().parse::<u32>().ok()? != 0),
            // Unknown attributes from future kernels are not ours to reject.
            _ => {}
        }
    }
    let (name, ty) = decl?;
    Some(Field {
        name,
        ty,
        offset: offset?,
        size: size?,
        // Kernels before 2.6.32 did not print `signed:`; unsigned is the safe reading.
        signed: signed.unwrap_or(false),
    })
}

/// Parses the text of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Result<Format> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(v) = trimmed.strip_prefix("name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = trimmed.strip_prefix("ID:") {
            let v = v.trim();
            id = Some(v.parse::<u32>().map_err(|_| {
                anyhow!("tracepoint format line {}: ID {v:?} is not a number: the format file is malformed", n + 1)
            })?);
        } else if trimmed.starts_with("field:") {
            let field = parse_field(trimmed).ok_or_else(|| {
                anyhow!("tracepoint format line {} is not a valid field description: {trimmed:?}", n + 1)
            })?;
            fields.push(field);
        } else if trimmed.starts_with("print fmt:") {
            // The print format is free text that may itself mention "field:".
            break;
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("tracepoint format has no `name:` line: the text is not a tracefs format file"))?;
    if fields.is_empty() {
        bail!("tracepoint format for {name} lists no fields: the format file is malformed");
    }
    Ok(Format { name, id, fields })
}

/// Reads and parses `<tracefs>/events/<group>/<name>/format`.
pub fn read_format(tracefs: &Path, group: &str, name: &str) -> Result<Format> {
    let path = tracefs.join("events").join(group).join(name).join("format");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("tracepoint {group}:{name} not found at {}: this kernel does not have it", path.display())
        }
        Err(e) => bail!("cannot read {}: {e}: run connmon as root", path.display()),
    };
    parse_format(&text).with_context(|| format!("tracepoint {group}:{name} at {}", path.display()))
}

#[cfg(test)]
#[path = "tracefs_tests.rs"]
mod tests;
