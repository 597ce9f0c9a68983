//! Whether the running kernel can preempt a task inside a BPF program: then
//! the per-CPU counters' nesting levels (struct cgdrop_stat_cpu) are not
//! enough to keep them exact, and the programs use atomic adds instead.
use std::io::Read;

/// The kernel's preemption models, as `preempt=` and debugfs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    None,
    Voluntary,
    /// full, lazy or realtime: a task can be preempted anywhere in the kernel.
    Preemptible,
}

impl Model {
    fn named(word: &str) -> Option<Model> {
        match word {
            "none" => Some(Model::None),
            "voluntary" => Some(Model::Voluntary),
            "full" | "lazy" => Some(Model::Preemptible),
            _ => None,
        }
    }
}

/// The model from debugfs' `sched/preempt` ("none (voluntary) full lazy": the current one in brackets).
fn from_debugfs(text: &str) -> Option<Model> {
    text.split_whitespace().find_map(|w| w.strip_prefix('(')?.strip_suffix(')')).and_then(Model::named)
}

/// The `preempt=` boot parameter of a PREEMPT_DYNAMIC kernel.
fn from_cmdline(cmdline: &str) -> Option<Model> {
    cmdline.split_whitespace().filter_map(|w| w.strip_prefix("preempt=")).next_back().and_then(Model::named)
}

/// The model a kernel was built with (its default under PREEMPT_DYNAMIC).
fn from_config(config: &str) -> Option<Model> {
    let set = |name: &str| config.lines().any(|l| l.strip_prefix(name) == Some("=y"));
    if set("CONFIG_PREEMPT_RT") || set("CONFIG_PREEMPT") || set("CONFIG_PREEMPT_LAZY") {
        Some(Model::Preemptible)
    } else if set("CONFIG_PREEMPT_VOLUNTARY") {
        Some(Model::Voluntary)
    } else if set("CONFIG_PREEMPT_NONE") {
        Some(Model::None)
    } else {
        None
    }
}

/// The model from the version string (`uname -v`), when it settles it.
fn from_version(version: &str) -> Option<Model> {
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.iter().any(|w| matches!(*w, "PREEMPT_RT" | "PREEMPT" | "PREEMPT_LAZY")) {
        Some(Model::Preemptible)
    } else if words.contains(&"PREEMPT_DYNAMIC") {
        None
    } else {
        // Built without preemption (none or voluntary: the version string says neither).
        Some(Model::Voluntary)
    }
}

fn kernel_config() -> Option<String> {
    if let Ok(file) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(file).read_to_string(&mut text).is_ok() {
            return Some(text);
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
}

/// The running kernel's model; None when nothing tells (then assume the worst).
pub fn model() -> Option<Model> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    if let Some(m) = read("/sys/kernel/debug/sched/preempt").as_deref().and_then(from_debugfs) {
        return Some(m);
    }
    let version = read("/proc/sys/kernel/version")?;
    if let Some(m) = from_version(&version) {
        return Some(m);
    }
    // PREEMPT_DYNAMIC: the boot parameter, else the configured default.
    read("/proc/cmdline").as_deref().and_then(from_cmdline).or_else(|| kernel_config().as_deref().and_then(from_config))
}

/// Whether the counters must use atomic adds (the model allows preemption
/// inside a program, or is unknown). Found out once per process: reading
/// /proc/config.gz costs ~2 ms, and a start asks for every load.
pub fn counters_need_atomics() -> bool {
    static ATOMICS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ATOMICS.get_or_init(|| !matches!(model(), Some(Model::None | Model::Voluntary)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_is_read() {
        assert_eq!(from_debugfs("none (voluntary) full lazy\n"), Some(Model::Voluntary));
        assert_eq!(from_debugfs("none voluntary (full) lazy"), Some(Model::Preemptible));
        assert_eq!(from_cmdline("quiet preempt=none ro"), Some(Model::None));
        assert_eq!(from_cmdline("quiet ro"), None);
        assert_eq!(
            from_config("# CONFIG_PREEMPT is not set\nCONFIG_PREEMPT_NONE=y\nCONFIG_PREEMPT_DYNAMIC=y\n"),
            Some(Model::None)
        );
        assert_eq!(from_config("CONFIG_PREEMPT_LAZY=y\n"), Some(Model::Preemptible));
        assert_eq!(from_version("#1 SMP PREEMPT_DYNAMIC Debian 6.12"), None);
        assert_eq!(from_version("#1 SMP PREEMPT_RT Fri"), Some(Model::Preemptible));
        assert_eq!(from_version("#1 SMP PREEMPT Fri"), Some(Model::Preemptible));
        assert_eq!(from_version("#1 SMP Fri"), Some(Model::Voluntary));
    }
}
