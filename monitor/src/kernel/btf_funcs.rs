//! Kernel functions and enums in BTF, for the probes that hook a kernel function (fexit, kprobe)
//! and for helpers newer than a program's hook: whether a function exists with the argument types
//! a program reads (a kprobe sees raw registers, so a changed signature would be read as garbage
//! rather than refused), and whether `enum bpf_func_id` names a helper, so a program calling one
//! the kernel lacks is skipped before the verifier rejects it. A child module of `btf` so it reads
//! the parsed tables directly.
use anyhow::{anyhow, Result};

use super::*;

impl Btf {
    /// First type of `kind` named `name` (a linear pass: called a few times at start-up).
    fn find_kind(&self, kind: u32, name: &str) -> Option<&Type> {
        self.types.iter().skip(1).find(|t| t.kind() == kind && self.name(t.name_off) == name)
    }

    /// C spelling of type `id`, qualifiers dropped and typedefs kept by name: `struct sock *`,
    /// `bool`, `void`.
    pub(super) fn type_name(&self, id: u32) -> String {
        let mut id = id;
        for _ in 0..MAX_DEPTH {
            let Some(t) = self.ty(id) else { return "?".into() };
            match t.kind() {
                _ if id == 0 => return "void".into(),
                KIND_PTR => return format!("{} *", self.type_name(t.size_or_type)),
                // A forward declaration's kind flag tells union from struct; a struct's means bitfields.
                KIND_FWD if t.kind_flag() => return format!("union {}", self.name(t.name_off)),
                KIND_STRUCT | KIND_FWD => return format!("struct {}", self.name(t.name_off)),
                KIND_UNION => return format!("union {}", self.name(t.name_off)),
                KIND_ENUM | KIND_ENUM64 => return format!("enum {}", self.name(t.name_off)),
                KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                KIND_FUNC_PROTO => return "function".into(),
                _ => return self.name(t.name_off).to_string(),
            }
        }
        "?".into()
    }

    /// Return type and argument types of kernel function `name`, spelled as `type_name` does.
    pub fn func_signature(&self, name: &str) -> Result<(String, Vec<String>)> {
        let func = self.find_kind(KIND_FUNC, name).ok_or_else(|| anyhow!("kernel BTF has no function {name}"))?;
        let proto = self
            .ty(func.size_or_type)
            .filter(|t| t.kind() == KIND_FUNC_PROTO)
            .ok_or_else(|| anyhow!("kernel BTF entry of {name} has no prototype"))?;
        let args = (0..proto.vlen())
            .map(|i| u32_at(&self.type_data, proto.data + i * 8 + 4).map_or("?".into(), |id| self.type_name(id)))
            .collect();
        Ok((self.type_name(proto.size_or_type), args))
    }

    /// Whether enum `enum_name` has a value named `value`.
    pub fn enum_has(&self, enum_name: &str, value: &str) -> bool {
        let Some(t) = self.find_kind(KIND_ENUM, enum_name).or_else(|| self.find_kind(KIND_ENUM64, enum_name)) else {
            return false;
        };
        let stride = if t.kind() == KIND_ENUM { 8 } else { 12 };
        (0..t.vlen()).any(|i| u32_at(&self.type_data, t.data + i * stride).is_some_and(|off| self.name(off) == value))
    }
}

/// Checks that kernel function `name` returns `ret` and takes `args`, as the program reading it
/// expects; the error names what differs.
pub fn check_signature(btf: &Btf, name: &str, ret: &str, args: &[&str]) -> Result<()> {
    let (have_ret, have_args) = btf.func_signature(name)?;
    if have_ret != ret || have_args != args {
        return Err(anyhow!(
            "{name} is `{have_ret} ({})` in kernel BTF, the program reads `{ret} ({})`",
            have_args.join(", "),
            args.join(", ")
        ));
    }
    Ok(())
}

/// Whether the kernel has BPF helper `bpf_NAME` (from `enum bpf_func_id` in its BTF).
pub fn has_helper(btf: &Btf, name: &str) -> bool {
    btf.enum_has("bpf_func_id", &format!("BPF_FUNC_{name}"))
}
