//! `cgdrop apply`'s files: named policies in TOML (`[policy.NAME]`, keys
//! mirroring the command line's flags), read whole and checked — targets,
//! rules, interfaces — before anything changes.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    cli::PolicyArgs,
    host::target::{self, CgroupTarget},
    policy::Policy,
    rules::{PortRange, RejectWith, Targets},
};

/// `port = 443` or `port = "8000-8100"` / `"https"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: BTreeMap<String, Decl>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Direction {
    Ingress,
    Egress,
    Both,
}

/// One `[policy.NAME]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decl {
    cgroup: Option<String>,
    unit: Option<String>,
    container: Option<String>,
    /// Create the cgroup (`cgroup` targets) when it does not exist.
    #[serde(default)]
    create: bool,
    direction: Option<Direction>,
    #[serde(default)]
    block: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    port: Option<Spanned<PortSpec>>,
    iface: Option<String>,
    rules_file: Option<PathBuf>,
    #[serde(default)]
    silent: bool,
    #[serde(default)]
    dry_run: bool,
    log_rate: Option<u32>,
    /// Close connections made before the policy that it drops (as --kill-existing).
    #[serde(default)]
    kill_existing: bool,
    /// As --reject-with: "eperm", "refused" or "reset".
    reject_with: Option<String>,
    /// As --no-new-inbound.
    #[serde(default)]
    no_new_inbound: bool,
    /// Keep the rules `cgdrop rule add` put in the pinned policy when it is replaced.
    #[serde(default)]
    keep_live_rules: bool,
}

/// A declared policy, checked.
pub struct Declared {
    pub name: String,
    /// `FILE:LINE` of its table, for messages.
    pub at: String,
    pub target: CgroupTarget,
    pub create: bool,
    pub policy: Policy,
    pub keep_live_rules: bool,
}

/// The files `paths` name: each FILE, and the `*.toml` files directly in each
/// DIR (sorted). Every file is read and checked before this returns: one bad
/// file refuses them all.
pub fn read(paths: &[PathBuf]) -> Result<Vec<Declared>> {
    let mut files = Vec::new();
    for p in paths {
        let meta = fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        if meta.is_dir() {
            let mut in_dir: Vec<PathBuf> = fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml") && f.is_file())
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    let mut all: Vec<Declared> = Vec::new();
    for f in &files {
        for d in read_file(f)? {
            if let Some(first) = all.iter().find(|a| a.name == d.name) {
                bail!("{}: policy {} is declared twice (first at {}): rename one", d.at, d.name, first.at);
            }
            if let Some(same) = all.iter().find(|a| a.target == d.target) {
                bail!(
                    "{}: policies {} and {} both aim at {}: one policy per target",
                    d.at,
                    same.name,
                    d.name,
                    d.target
                );
            }
            all.push(d);
        }
    }
    Ok(all)
}

/// The line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of the `[policy.NAME]` header (1 if it cannot be found).
fn header_line(text: &str, name: &str) -> usize {
    let forms = [format!("[policy.{name}]"), format!("[policy.\"{name}\"]"), format!("[policy.'{name}']")];
    text.lines()
        .position(|l| {
            let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
            forms.iter().any(|f| l.starts_with(f.as_str()))
        })
        .map_or(1, |i| i + 1)
}

fn read_file(path: &Path) -> Result<Vec<Declared>> {
    let file = path.display();
    let text = fs::read_to_string(path).with_context(|| format!("reading {file}"))?;
    let parsed: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        anyhow!("{file}:{line}: {}", e.message().replace('\n', " ").trim())
    })?;
    let mut out = Vec::new();
    for (name, d) in parsed.policy {
        let at = format!("{file}:{}", header_line(&text, &name));
        if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("{at}: policy name '{name}' must be 1-63 letters, digits, '-', '_' or '.'");
        }
        let targets: Vec<CgroupTarget> = [
            d.cgroup.clone().map(|c| CgroupTarget::Cgroup(c.into())),
            d.unit.clone().map(CgroupTarget::Unit),
            d.container.clone().map(CgroupTarget::Container),
        ]
        .into_iter()
        .flatten()
        .collect();
        let target = match targets.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "{at}: policy {name} has no target: set one of cgroup = \"PATH\", unit = \"NAME\", container = \"ID\""
            ),
            _ => bail!("{at}: policy {name} has {} targets: set exactly one of cgroup, unit, container", targets.len()),
        };
        if let CgroupTarget::Unit(u) = &target {
            target::unit_name(u).map_err(|e| anyhow!("{at}: policy {name}: {e}"))?;
        }
        if d.create && !matches!(target, CgroupTarget::Cgroup(_)) {
            bail!("{at}: policy {name}: create = true needs a cgroup target (systemd and the runtimes make theirs)");
        }
        let rules = |list: &[Spanned<String>]| -> Result<Vec<Targets>> {
            list.iter()
                .map(|r| {
                    r.get_ref()
                        .parse::<Targets>()
                        .map_err(|e| anyhow!("{file}:{}: policy {name}: {e:#}", line_of(&text, r.span().start)))
                })
                .collect()
        };
        let direction = d.direction.unwrap_or(Direction::Both);
        let args = PolicyArgs {
            ingress: matches!(direction, Direction::Ingress),
            egress: matches!(direction, Direction::Egress),
            both: matches!(direction, Direction::Both),
            iface: d.iface.clone(),
            port: match &d.port {
                None => None,
                Some(spec) => {
                    let given = match spec.get_ref() {
                        PortSpec::Number(n) => n.to_string(),
                        PortSpec::Text(t) => t.clone(),
                    };
                    let line = line_of(&text, spec.span().start);
                    Some(given.parse::<PortRange>().map_err(|e| anyhow!("{file}:{line}: policy {name}: {e}"))?)
                }
            },
            block: rules(&d.block)?,
            allow: rules(&d.allow)?,
            rules_file: d.rules_file.clone(),
            silent: d.silent,
            dry_run: d.dry_run,
            log_rate: d.log_rate.unwrap_or(100),
            kill_existing: d.kill_existing,
            reject_with: match d.reject_with.as_deref() {
                None | Some("eperm") => RejectWith::Eperm,
                Some("refused") => RejectWith::Refused,
                Some("reset") => RejectWith::Reset,
                Some(other) => {
                    bail!("{at}: policy {name}: reject_with = \"{other}\": use \"eperm\", \"refused\" or \"reset\"")
                }
            },
            no_new_inbound: d.no_new_inbound,
        };
        let policy = Policy::from_args(&args).map_err(|e| anyhow!("{at}: policy {name}: {e:#}"))?;
        out.push(Declared { name, at, target, create: d.create, policy, keep_live_rules: d.keep_live_rules });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Declared>> {
        let f = std::env::temp_dir().join(format!("cgdrop-test-declared-{}-{}.toml", std::process::id(), text.len()));
        fs::write(&f, text).unwrap();
        let r = read_file(&f);
        let _ = fs::remove_file(&f);
        r
    }

    #[test]
    fn a_policy_reads_as_the_flags_would() {
        let d = parse(
            "[policy.web]\nunit = \"nginx.service\"\ndirection = \"egress\"\nblock = [\"10.0.0.0/8\", \"[::/0]:25\"]\nallow = [\"10.1.2.3\"]\nport = 443\n",
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name, "web");
        assert_eq!(d[0].target, CgroupTarget::Unit("nginx.service".into()));
        assert!(d[0].policy.egress && !d[0].policy.ingress);
        assert_eq!(d[0].policy.rules.len(), 3);
        assert_eq!(d[0].policy.port, Some(PortRange { lo: 443, hi: 443 }));
    }

    #[test]
    fn errors_name_the_line() {
        let err = |t: &str| format!("{:#}", parse(t).err().expect("an error"));
        let e = err("[policy.web]\nunit = \"a\"\nblok = [\"1.2.3.4\"]\n");
        assert!(e.contains(":3: unknown field `blok`"), "{e}");
        let e = err("[policy.web]\nunit = \"a\"\nblock = [\n  \"1.2.3.4\",\n  \"300.1.1.1\",\n]\n");
        assert!(e.contains(":5: policy web:"), "{e}");
        let e = err("[policy.web]\nunit = \"a\"\ncontainer = \"b\"\n");
        assert!(e.contains(":1: policy web has 2 targets"), "{e}");
        let e = err("\n[policy.web]\ndirection = \"up\"\ncgroup = \"x\"\n");
        assert!(e.contains(":3: unknown variant `up`"), "{e}");
        let e = err("[policy.web]\ncgroup = \"x\"\nport = 70000\n");
        assert!(e.contains(":3:"), "{e}");
        let e = err("[policy.web]\n");
        assert!(e.contains("has no target"), "{e}");
    }
}
