//! Whether the running kernel can preempt a task inside a BPF program: then
//! the per-CPU counters' nesting levels (struct cgdrop_stat_cpu) are not
//! enough to keep them exact, and the programs use atomic adds instead.
//! The configured model is kept for the boot in /run/cgdrop/kernel-preempt.
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
/// One pass over the ~4,000 lines, looking only at `CONFIG_PREEMPT…=y` ones
/// (a search of the whole text per option cost ~2 ms of every start).
fn from_config(config: &str) -> Option<Model> {
    let (mut preemptible, mut voluntary, mut none) = (false, false, false);
    for name in config.lines().filter_map(|l| l.strip_prefix("CONFIG_PREEMPT")?.strip_suffix("=y")) {
        match name {
            "_RT" | "" | "_LAZY" => preemptible = true,
            "_VOLUNTARY" => voluntary = true,
            "_NONE" => none = true,
            _ => {}
        }
    }
    if preemptible {
        Some(Model::Preemptible)
    } else if voluntary {
        Some(Model::Voluntary)
    } else if none {
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
    read("/proc/cmdline").as_deref().and_then(from_cmdline).or_else(config_model)
}

/// Where the configured model is kept for the rest of the boot: gunzipping
/// /proc/config.gz costs 1-2 ms of every start, and a kernel's
/// configuration cannot change while it runs.
const CACHE: &str = "/run/cgdrop/kernel-preempt";

/// The configured model, from the cache when it is this boot's (and only
/// root could have written it), else read and cached.
fn config_model() -> Option<Model> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = boot.trim();
    let trusted = |m: &std::fs::Metadata| m.uid() == 0 && m.mode() & 0o022 == 0;
    let dir = std::path::Path::new(CACHE).parent()?;
    if let (Ok(d), Ok(f)) = (std::fs::symlink_metadata(dir), std::fs::symlink_metadata(CACHE)) {
        if d.is_dir() && trusted(&d) && f.is_file() && trusted(&f) {
            let text = std::fs::read_to_string(CACHE).unwrap_or_default();
            if let Some((b, model)) = text.trim().split_once(' ') {
                if b == boot {
                    return Model::named(model);
                }
            }
        }
    }
    let model = kernel_config().as_deref().and_then(from_config)?;
    let name = match model {
        Model::None => "none",
        Model::Voluntary => "voluntary",
        Model::Preemptible => "full",
    };
    // Best effort: a start without the cache only reads the config again.
    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
    let tmp = format!("{CACHE}.{}", std::process::id());
    if std::fs::write(&tmp, format!("{boot} {name}\n")).is_ok() && std::fs::rename(&tmp, CACHE).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Some(model)
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
        assert_eq!(from_config("CONFIG_PREEMPT_NONE=y\nCONFIG_PREEMPT_RT=y\n"), Some(Model::Preemptible));
        assert_eq!(from_config("CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_VOLUNTARY=y\n"), Some(Model::Voluntary));
        assert_eq!(from_config("CONFIG_PREEMPT_COUNT=y\n# CONFIG_PREEMPT is not set\n"), None);
        assert_eq!(from_version("#1 SMP PREEMPT_DYNAMIC Debian 6.12"), None);
        assert_eq!(from_version("#1 SMP PREEMPT_RT Fri"), Some(Model::Preemptible));
        assert_eq!(from_version("#1 SMP PREEMPT Fri"), Some(Model::Preemptible));
        assert_eq!(from_version("#1 SMP Fri"), Some(Model::Voluntary));
    }
}
