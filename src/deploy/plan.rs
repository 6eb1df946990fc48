//! The planner: a pure function from (desired, current) to a list of typed
//! steps, each carrying its reason. No I/O, deterministic; tests assert on
//! plans, not on side effects.

use super::model::*;
use crate::ids::{Alias, BlueprintId, PackageName, PeerId, ServiceId};
use crate::runtime::wit::ArgError;
use crate::runtime::FunctionSig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// One step of a plan. The executor runs them; `plan` output prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    /// Create the service, run its init calls, bind the alias.
    Install {
        alias: Alias,
        package: PackageName,
        blueprint_id: BlueprintId,
        reason: String,
    },
    /// Nothing to do.
    Keep {
        alias: Alias,
        package: PackageName,
    },
    /// Call the (on-change) init functions again on the same service.
    Reinit {
        alias: Alias,
        package: PackageName,
        service_id: ServiceId,
        functions: Vec<String>,
        reason: String,
    },
    /// Blue-green: new service beside the old, data carried over when
    /// `keep_data`, init, swap the alias, remove the old.
    Replace {
        alias: Alias,
        package: PackageName,
        old_service_id: ServiceId,
        blueprint_id: BlueprintId,
        keep_data: bool,
        /// The version the new service's `migrate` export is called with
        /// (issue 17); `None` when it is not called.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migrate_from: Option<String>,
        reason: String,
    },
    /// What is observed disagrees with what was recorded (an alias unbound
    /// or pointing elsewhere): point the alias back at the recorded service
    /// or spell, removing a host-owned leftover it pointed at.
    Repair {
        alias: Alias,
        package: PackageName,
        /// `service` or `spell`
        kind: String,
        /// The recorded service or spell id the alias must point at.
        target: String,
        reason: String,
    },
    /// The deployer's service is no longer wanted.
    Remove {
        alias: Alias,
        package: PackageName,
        service_id: ServiceId,
        reason: String,
    },
    /// The alias is held by something the host does not own; nothing of
    /// theirs is touched and this alias is not deployed.
    Conflict {
        alias: Alias,
        package: PackageName,
        owner: PeerId,
        reason: String,
    },
    InstallSpell {
        alias: Alias,
        package: PackageName,
        reason: String,
    },
    /// Script and/or trigger changed: updated in place, KV and history kept.
    UpdateSpell {
        alias: Alias,
        package: PackageName,
        script: bool,
        trigger: bool,
        reason: String,
    },
    /// Write these configured KV keys (three-way: only keys whose configured
    /// value changed since last applied).
    KvApply {
        alias: Alias,
        package: PackageName,
        keys: Vec<String>,
        reason: String,
    },
    KeepSpell {
        alias: Alias,
        package: PackageName,
    },
    RemoveSpell {
        alias: Alias,
        package: PackageName,
        reason: String,
    },
}

impl Step {
    pub fn alias(&self) -> &Alias {
        match self {
            Step::Install { alias, .. }
            | Step::Keep { alias, .. }
            | Step::Reinit { alias, .. }
            | Step::Replace { alias, .. }
            | Step::Repair { alias, .. }
            | Step::Remove { alias, .. }
            | Step::Conflict { alias, .. }
            | Step::InstallSpell { alias, .. }
            | Step::UpdateSpell { alias, .. }
            | Step::KvApply { alias, .. }
            | Step::KeepSpell { alias, .. }
            | Step::RemoveSpell { alias, .. } => alias,
        }
    }
    pub fn package(&self) -> &PackageName {
        match self {
            Step::Install { package, .. }
            | Step::Keep { package, .. }
            | Step::Reinit { package, .. }
            | Step::Replace { package, .. }
            | Step::Repair { package, .. }
            | Step::Remove { package, .. }
            | Step::Conflict { package, .. }
            | Step::InstallSpell { package, .. }
            | Step::UpdateSpell { package, .. }
            | Step::KvApply { package, .. }
            | Step::KeepSpell { package, .. }
            | Step::RemoveSpell { package, .. } => package,
        }
    }
    /// The step's kind as shown in reports and metrics (`install`, `kv-apply`).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Install { .. } => "install",
            Step::Keep { .. } => "keep",
            Step::Reinit { .. } => "reinit",
            Step::Replace { .. } => "replace",
            Step::Repair { .. } => "repair",
            Step::Remove { .. } => "remove",
            Step::Conflict { .. } => "conflict",
            Step::InstallSpell { .. } => "install-spell",
            Step::UpdateSpell { .. } => "update-spell",
            Step::KvApply { .. } => "kv-apply",
            Step::KeepSpell { .. } => "keep-spell",
            Step::RemoveSpell { .. } => "remove-spell",
        }
    }
    /// Keeps change nothing.
    pub fn is_change(&self) -> bool {
        !matches!(self, Step::Keep { .. } | Step::KeepSpell { .. })
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Step::Keep { .. } | Step::KeepSpell { .. } => None,
            Step::Install { reason, .. }
            | Step::Reinit { reason, .. }
            | Step::Replace { reason, .. }
            | Step::Repair { reason, .. }
            | Step::Remove { reason, .. }
            | Step::Conflict { reason, .. }
            | Step::InstallSpell { reason, .. }
            | Step::UpdateSpell { reason, .. }
            | Step::KvApply { reason, .. }
            | Step::RemoveSpell { reason, .. } => Some(reason),
        }
    }
}

/// The ordered steps. Removals of packages no longer wanted come first (in
/// reverse dependency order), then every desired package in dependency order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.is_change())
    }
    pub fn is_noop(&self) -> bool {
        self.changes().next().is_none()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_noop() {
            return writeln!(f, "no changes ({} deployed, all up to date)", self.steps.len());
        }
        let n = self.changes().count();
        writeln!(f, "{n} change{}:", if n == 1 { "" } else { "s" })?;
        for s in self.changes() {
            writeln!(f, "  {:<13} {:<20} [{}] {}", s.kind(), s.alias().to_string(), s.package(), s.reason().unwrap_or(""))?;
        }
        let kept = self.steps.len() - n;
        if kept > 0 {
            writeln!(f, "  ({kept} unchanged)")?;
        }
        Ok(())
    }
}

/// Why a plan cannot be made. Reported all at once; nothing was touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PlanError {
    #[error("package {package}, service {alias}: init function {function} is not exported by the service; it exports: {available}")]
    UnknownInitFunction { package: PackageName, alias: Alias, function: String, available: String },
    #[error("package {package}, service {alias}: init {function} takes {expected} argument(s), the manifest gives {got}")]
    InitArity { package: PackageName, alias: Alias, function: String, expected: usize, got: usize },
    #[error("package {package}, service {alias}: init {function}, parameter {param}: expected {expected}, got {got}{from}")]
    InitArgType { package: PackageName, alias: Alias, function: String, param: String, expected: String, got: String, from: String },
    #[error("alias {alias} is wanted by both package {first} and package {second}")]
    DuplicateAlias { alias: Alias, first: PackageName, second: PackageName },
    #[error("package {package}, service {alias}: private function {function} is not exported by the service; it exports: {available}")]
    UnknownPrivateFunction { package: PackageName, alias: Alias, function: String, available: String },
    #[error("package {package}, spell {spell}, line {line}: call({alias:?}, {function:?}): {problem}")]
    SpellCall { package: PackageName, spell: Alias, line: usize, alias: String, function: String, problem: String },
    #[error("package {package}, service {alias}: export {found} has the reserved name migrate but not its signature; expected migrate: {expected}", expected = super::migrate::SIGNATURE)]
    MigrateSignature { package: PackageName, alias: Alias, function: String, found: String },
    #[error("package {package}: deployed version {deployed} is older than the oldest version this release migrates from ({oldest}); upgrade through an intermediate release first")]
    MigrationGap { package: PackageName, deployed: String, oldest: String },
    #[error("package {package}, service {alias}: the data to restore was kept from service {service}, but this node keeps no data of that service (kept: {kept}); choose a generation whose data is still kept, or roll back without restoring data")]
    KeptDataMissing { package: PackageName, alias: Alias, service: ServiceId, kept: String },
}

/// All problems found while planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the plan has {} problem(s); nothing was changed:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for PlanErrors {}

/// Computes the plan. `host` is the host peer id: only what it owns may be
/// changed.
pub fn plan(desired: &Desired, current: &Current, host: &PeerId) -> Result<Plan, PlanErrors> {
    let mut errors = Vec::new();
    let mut steps = Vec::new();

    // Every alias wanted, and by which package (duplicates are errors).
    let mut wanted: HashMap<&Alias, &PackageName> = HashMap::with_capacity(current.deployed.len());
    for p in &desired.packages {
        let aliases = p.services.iter().map(|s| &s.alias).chain(p.spells.iter().map(|s| &s.alias));
        for a in aliases {
            if let Some(first) = wanted.insert(a, &p.name) {
                errors.push(PlanError::DuplicateAlias { alias: a.clone(), first: first.clone(), second: p.name.clone() });
            }
        }
    }
    for p in &desired.packages {
        for s in &p.services {
            typecheck_init(s, desired.exports.get(&s.blueprint_id), &mut errors);
            super::access::check_private(s, desired.exports.get(&s.blueprint_id), &mut errors);
        }
    }
    super::spell_calls::check(desired, current, host, &mut errors);
    super::migrate::check(desired, current, &mut errors);
    if !errors.is_empty() {
        return Err(PlanErrors(errors));
    }

    // Removals first: a package that is gone frees its aliases before others
    // deploy. Dependents were deployed after their dependencies, so they are
    // removed before them: reverse catalog order, packages the catalog no
    // longer knows first; within a package, by alias.
    let enabled: HashSet<&PackageName> = desired.packages.iter().map(|p| &p.name).collect();
    let rank = |p: &PackageName| desired.catalog_order.iter().position(|n| n == p).map_or(0, |i| desired.catalog_order.len() - i);
    let mut removals: Vec<&Deployed> = current.deployed.values().filter(|d| !wanted.contains_key(&d.alias)).collect();
    removals.sort_by(|a, b| rank(&a.package).cmp(&rank(&b.package)).then(b.package.cmp(&a.package)).then(a.alias.cmp(&b.alias)));
    for d in removals {
        let reason = if enabled.contains(&d.package) {
            format!("no longer part of package {} {}", d.package, d.version)
        } else {
            format!("package {} is not enabled", d.package)
        };
        steps.push(match &d.kind {
            DeployedKind::Service { service_id, .. } => {
                Step::Remove { alias: d.alias.clone(), package: d.package.clone(), service_id: service_id.clone(), reason }
            }
            DeployedKind::Spell { .. } => Step::RemoveSpell { alias: d.alias.clone(), package: d.package.clone(), reason },
        });
    }
    // Host-owned spells nobody recorded and nobody wants (left by a crash or
    // an older release): observed, so removed.
    for (alias, sp) in &current.spells {
        if sp.owner == *host && !current.deployed.contains_key(alias) && !wanted.contains_key(alias) {
            steps.push(Step::RemoveSpell {
                alias: alias.clone(),
                package: PackageName::new("unrecorded").expect("valid name"),
                reason: format!("spell {} is not recorded as deployed and no package wants it", sp.id),
            });
        }
    }

    let index = Index::of(current);
    for p in &desired.packages {
        for s in &p.services {
            let planned = plan_service(s, &index, host, desired.exports.get(&s.blueprint_id).map(Vec::as_slice));
            // Data to restore must still be kept when the step would use it.
            if let Some(id) = &s.restore_data_from {
                let uses = planned.iter().any(|st| matches!(st, Step::Replace { .. } | Step::Install { .. }));
                if uses && !current.kept.contains_key(id) {
                    let kept = current.kept.keys().map(ServiceId::to_string).collect::<Vec<_>>();
                    errors.push(PlanError::KeptDataMissing {
                        package: s.package.clone(),
                        alias: s.alias.clone(),
                        service: id.clone(),
                        kept: if kept.is_empty() { "none".into() } else { kept.join(", ") },
                    });
                }
            }
            steps.extend(planned);
        }
        for s in &p.spells {
            steps.extend(plan_spell(s, &index, host));
        }
    }
    if !errors.is_empty() {
        return Err(PlanErrors(errors));
    }
    Ok(Plan { steps })
}

/// Hash-map views of `Current` for the per-service lookups, so planning is
/// linear in the number of services (the `BTreeMap`s of `Current` cost
/// O(log N) per lookup: t(10,000)/t(1,000) was 13).
struct Index<'a> {
    deployed: HashMap<&'a Alias, &'a Deployed>,
    aliases: HashMap<&'a Alias, &'a AliasHolder>,
    services: HashMap<&'a ServiceId, &'a ObservedService>,
    spells: HashMap<&'a Alias, &'a ObservedSpell>,
    kept: &'a BTreeMap<ServiceId, KeptData>,
}

impl<'a> Index<'a> {
    fn of(current: &'a Current) -> Self {
        Index {
            deployed: current.deployed.iter().collect(),
            aliases: current.aliases.iter().collect(),
            services: current.services.iter().collect(),
            spells: current.spells.iter().collect(),
            kept: &current.kept,
        }
    }
}

/// If someone other than the host holds `alias`, the conflict step.
fn conflict(alias: &Alias, package: &PackageName, current: &Index, host: &PeerId) -> Option<Step> {
    let holder = current.aliases.get(alias)?;
    (holder.owner != *host).then(|| Step::Conflict {
        alias: alias.clone(),
        package: package.clone(),
        owner: holder.owner.clone(),
        reason: format!("alias is held by {} {} owned by {}; it is left untouched", holder.kind, holder.target, holder.owner),
    })
}

/// The steps of one desired service: one, or a repair of its alias followed
/// by what its config asks for.
fn plan_service(s: &DesiredService, current: &Index, host: &PeerId, sigs: Option<&[FunctionSig]>) -> Vec<Step> {
    let mut out = Vec::new();
    let main = plan_service_main(s, current, host, sigs, &mut out);
    out.push(main);
    out
}

fn plan_service_main(s: &DesiredService, current: &Index, host: &PeerId, sigs: Option<&[FunctionSig]>, repairs: &mut Vec<Step>) -> Step {
    if let Some(c) = conflict(&s.alias, &s.package, current, host) {
        return c;
    }
    let restore = |id: &ServiceId| {
        let from = current.kept.get(id).and_then(|k| super::migrate::from_version(&k.version, &s.version, sigs));
        format!("; restore data kept from service {id}{}", from.map(|v| format!("; migrate from {v}")).unwrap_or_default())
    };
    let install = |reason: String| Step::Install {
        alias: s.alias.clone(),
        package: s.package.clone(),
        blueprint_id: s.blueprint_id,
        reason: format!(
            "{reason}{}{}",
            s.restore_data_from.as_ref().map(restore).unwrap_or_default(),
            init_note(s, s.restore_data_from.is_some())
        ),
    };
    let bound = current.aliases.get(&s.alias);
    let Some(d) = current.deployed.get(&s.alias) else {
        return install(match bound {
            Some(h) => format!("alias is bound by this host to {} {} but not recorded as deployed; installing afresh", h.kind, h.target),
            None => "not deployed yet".into(),
        });
    };
    let DeployedKind::Service { service_id, blueprint_id, components, init_hash, init_snapshot } = &d.kind else {
        return install("alias changes from a spell to a service".into());
    };
    let Some(observed) = current.services.get(service_id) else {
        return install(format!("recorded service {service_id} no longer exists; installing afresh"));
    };
    if observed.owner != *host {
        return Step::Conflict {
            alias: s.alias.clone(),
            package: s.package.clone(),
            owner: observed.owner.clone(),
            reason: format!("recorded service {service_id} is owned by {}, not by this host; it is left untouched", observed.owner),
        };
    }
    // Where the alias is not on the recorded service, say so; a replace
    // moves the alias anyway, anything else needs a repair.
    let misbound = match bound {
        None => Some("alias is not bound".to_string()),
        Some(h) if h.kind != "service" || h.target != service_id.as_str() => {
            Some(format!("alias points at {} {}, recorded is service {service_id}", h.kind, h.target))
        }
        Some(_) => None,
    };
    // The data the new service starts from: kept data to restore, the old
    // service's (`keep_data`), or none; `migrate` runs on carried data only.
    let carried = s.keep_data || s.restore_data_from.is_some();
    let data_version = match &s.restore_data_from {
        Some(id) => current.kept.get(id).map(|k| k.version.as_str()),
        None => Some(d.version.as_str()),
    };
    let migrate_from = data_version.filter(|_| carried).and_then(|v| super::migrate::from_version(v, &s.version, sigs)).map(str::to_string);
    // (`restore` names the migration of restored data itself.)
    let data_note = match (&s.restore_data_from, &migrate_from) {
        (Some(id), _) => restore(id),
        (None, Some(v)) => format!("; migrate from {v}"),
        (None, None) => String::new(),
    };
    let replace = |reason: String| Step::Replace {
        alias: s.alias.clone(),
        package: s.package.clone(),
        old_service_id: service_id.clone(),
        blueprint_id: s.blueprint_id,
        keep_data: s.keep_data,
        migrate_from: migrate_from.clone(),
        reason: match &misbound {
            Some(m) => format!("{reason}; {m}{data_note}{}", init_note(s, carried)),
            None => format!("{reason}{data_note}{}", init_note(s, carried)),
        },
    };
    if *blueprint_id != s.blueprint_id {
        return replace(describe_component_change(components, &s.components(), &d.version, &s.version));
    }
    if let Some(m) = &misbound {
        repairs.push(Step::Repair {
            alias: s.alias.clone(),
            package: s.package.clone(),
            kind: "service".into(),
            target: service_id.to_string(),
            reason: format!("{m}; pointing it back"),
        });
    }
    if *init_hash == s.init_hash() {
        return Step::Keep { alias: s.alias.clone(), package: s.package.clone() };
    }
    let reason = describe_init_change(init_snapshot, s);
    match s.on_config_change {
        ConfigChange::Reinit => Step::Reinit {
            alias: s.alias.clone(),
            package: s.package.clone(),
            service_id: service_id.clone(),
            functions: s.init.iter().filter(|i| i.run == InitRun::OnChange).map(|i| i.function.clone()).collect(),
            reason,
        },
        ConfigChange::Replace => {
            // The replace moves the alias itself.
            repairs.clear();
            replace(format!("{reason}; this service is replaced rather than re-initialised"))
        }
    }
}

/// Which init calls a new service will run, for install and replace reasons:
/// a replace that carries the data over skips the `on-install` ones (they
/// ran when the service was first created).
fn init_note(s: &DesiredService, carried: bool) -> String {
    let names = |run: Option<InitRun>| {
        let mut out: Vec<(String, usize)> = Vec::new();
        for i in s.init.iter().filter(|i| run.is_none_or(|r| i.run == r)) {
            match out.last_mut() {
                Some((f, n)) if *f == i.function => *n += 1,
                _ => out.push((i.function.clone(), 1)),
            }
        }
        out.iter().map(|(f, n)| if *n > 1 { format!("{f} ×{n}") } else { f.clone() }).collect::<Vec<_>>().join(", ")
    };
    if !carried {
        let all = names(None);
        return if all.is_empty() { String::new() } else { format!("; init: {all}") };
    }
    let (on_change, on_install) = (names(Some(InitRun::OnChange)), names(Some(InitRun::OnInstall)));
    match (on_change.is_empty(), on_install.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("; init: {on_change}"),
        (true, false) => format!("; on-install init not re-run (the data is carried over): {on_install}"),
        (false, false) => format!("; init: {on_change}; on-install init not re-run (the data is carried over): {on_install}"),
    }
}

fn describe_component_change(
    old: &[(String, crate::ids::ComponentHash)],
    new: &[(String, crate::ids::ComponentHash)],
    old_v: &str,
    new_v: &str,
) -> String {
    let mut parts = Vec::new();
    let old_map: BTreeMap<&str, _> = old.iter().map(|(n, h)| (n.as_str(), h)).collect();
    let new_names: BTreeSet<&str> = new.iter().map(|(n, _)| n.as_str()).collect();
    for (n, h) in new {
        match old_map.get(n.as_str()) {
            Some(oh) if *oh == h => {}
            Some(oh) => parts.push(format!("component {n} changed ({} → {})", oh.short(), h.short())),
            None => parts.push(format!("component {n} added ({})", h.short())),
        }
    }
    for (n, _) in old {
        if !new_names.contains(n.as_str()) {
            parts.push(format!("component {n} removed"));
        }
    }
    if parts.is_empty() {
        parts.push("component order or settings changed".into());
    }
    let mut s = parts.join(", ");
    if old_v != new_v {
        s.push_str(&format!(" (version {old_v} → {new_v})"));
    }
    s
}

fn describe_init_change(old_snapshot: &[serde_json::Value], s: &DesiredService) -> String {
    let mut changed = Vec::new();
    for call in s.init.iter().filter(|i| i.run == InitRun::OnChange) {
        if old_snapshot.contains(&call.fingerprint()) {
            continue;
        }
        if call.inputs.is_empty() {
            changed.push(format!("init {} arguments changed", call.function));
        }
        for i in &call.inputs {
            if i.secret {
                changed.push(format!("{} (secret) changed, from {}", i.key, i.source));
            } else {
                changed.push(format!("{} changed, now from {}", i.key, i.source));
            }
        }
    }
    if changed.is_empty() {
        changed.push("init calls changed".into());
    }
    changed.dedup();
    changed.join(", ")
}

/// The value remembered for a configured KV key: the value itself, or a
/// digest for secret keys.
pub fn kv_fingerprint(value: &serde_json::Value, secret: bool) -> serde_json::Value {
    if secret {
        let bytes = serde_json::to_vec(value).expect("json");
        serde_json::json!({ "secret_digest": blake3::hash(&bytes).to_hex().to_string() })
    } else {
        value.clone()
    }
}

/// The configured KV as it will be remembered after applying.
pub fn kv_applied_of(s: &DesiredSpell) -> BTreeMap<String, serde_json::Value> {
    s.kv.iter().map(|(k, v)| (k.clone(), kv_fingerprint(v, s.secret_keys.contains(k)))).collect()
}

fn plan_spell(s: &DesiredSpell, current: &Index, host: &PeerId) -> Vec<Step> {
    if let Some(c) = conflict(&s.alias, &s.package, current, host) {
        return vec![c];
    }
    let d = current.deployed.get(&s.alias);
    let install = |reason: String| vec![Step::InstallSpell { alias: s.alias.clone(), package: s.package.clone(), reason }];
    let Some(Deployed { kind: DeployedKind::Spell { spell_id, script_hash, trigger, kv_applied }, .. }) = d else {
        return install(match (d, current.spells.get(&s.alias)) {
            (Some(_), _) => "alias changes from a service to a spell".into(),
            (None, Some(sp)) => format!("spell {} exists but is not recorded as deployed; installing afresh", sp.id),
            (None, None) => "not deployed yet".into(),
        });
    };
    match current.spells.get(&s.alias) {
        Some(sp) if sp.id == *spell_id => {}
        Some(sp) => return install(format!("recorded spell {spell_id} was replaced by spell {}; installing afresh", sp.id)),
        None => return install(format!("recorded spell {spell_id} no longer exists; installing afresh")),
    }
    let misbound = match current.aliases.get(&s.alias) {
        None => Some("alias is not bound".to_string()),
        Some(h) if h.kind != "spell" || h.target != *spell_id => {
            Some(format!("alias points at {} {}, recorded is spell {spell_id}", h.kind, h.target))
        }
        Some(_) => None,
    };
    let mut out = Vec::new();
    if let Some(m) = misbound {
        out.push(Step::Repair {
            alias: s.alias.clone(),
            package: s.package.clone(),
            kind: "spell".into(),
            target: spell_id.clone(),
            reason: format!("{m}; pointing it back"),
        });
    }
    let script = *script_hash != s.script_hash;
    let trig = *trigger != s.trigger;
    if script || trig {
        let mut why = Vec::new();
        if script {
            why.push(format!(
                "script changed ({} → {})",
                &script_hash[..script_hash.len().min(12)],
                &s.script_hash[..s.script_hash.len().min(12)]
            ));
        }
        if trig {
            why.push(format!("trigger changed ({} → {})", describe_trigger(trigger), describe_trigger(&s.trigger)));
        }
        out.push(Step::UpdateSpell { alias: s.alias.clone(), package: s.package.clone(), script, trigger: trig, reason: why.join(", ") });
    }
    let now = kv_applied_of(s);
    let keys: Vec<String> = now.iter().filter(|(k, v)| kv_applied.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    if !keys.is_empty() {
        let why: Vec<String> = keys
            .iter()
            .map(|k| {
                let secret = s.secret_keys.contains(k);
                let from: Vec<String> =
                    s.kv_inputs.get(k).map(|v| v.iter().map(|i| format!("{} from {}", i.key, i.source)).collect()).unwrap_or_default();
                let tag = if secret { " (secret)" } else { "" };
                if from.is_empty() {
                    format!("{k}{tag} changed")
                } else {
                    format!("{k}{tag} changed ({})", from.join(", "))
                }
            })
            .collect();
        out.push(Step::KvApply { alias: s.alias.clone(), package: s.package.clone(), keys, reason: why.join(", ") });
    }
    if out.is_empty() {
        out.push(Step::KeepSpell { alias: s.alias.clone(), package: s.package.clone() });
    }
    out
}

fn describe_trigger(t: &DesiredTrigger) -> String {
    let start = t.start.map(|s| format!("at {s}")).unwrap_or_else(|| "now".into());
    let mut s = if t.period_sec == 0 { format!("once, {start}") } else { format!("every {}s from {start}", t.period_sec) };
    if let Some(e) = t.end {
        s.push_str(&format!(" until {e}"));
    }
    s
}

/// Finds `name` among the exports: exact, or the bare function name of
/// exactly one interface export.
pub fn find_export<'a>(sigs: &'a [FunctionSig], name: &str) -> Option<&'a FunctionSig> {
    if let Some(s) = sigs.iter().find(|s| s.name == name) {
        return Some(s);
    }
    let mut hits = sigs.iter().filter(|s| s.name.rsplit('#').next() == Some(name));
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

fn typecheck_init(s: &DesiredService, sigs: Option<&Vec<FunctionSig>>, errors: &mut Vec<PlanError>) {
    let Some(sigs) = sigs else { return };
    for call in &s.init {
        let Some(sig) = find_export(sigs, &call.function) else {
            errors.push(PlanError::UnknownInitFunction {
                package: s.package.clone(),
                alias: s.alias.clone(),
                function: call.function.clone(),
                available: sigs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            });
            continue;
        };
        let args = serde_json::Value::Array(call.args.clone());
        let got_of = |g: String| if call.is_secret() { "<redacted>".to_string() } else { g };
        let from = if call.inputs.is_empty() {
            String::new()
        } else {
            format!(" (from {})", call.inputs.iter().map(|i| format!("{} at {}", i.key, i.source)).collect::<Vec<_>>().join(", "))
        };
        match crate::runtime::wit::check_args(sig, &args) {
            Ok(()) => {}
            Err(ArgError::Mismatch { param, expected, got }) => errors.push(PlanError::InitArgType {
                package: s.package.clone(),
                alias: s.alias.clone(),
                function: call.function.clone(),
                param,
                expected,
                got: got_of(got),
                from,
            }),
            Err(ArgError::WrongCount { expected, got, .. }) => errors.push(PlanError::InitArity {
                package: s.package.clone(),
                alias: s.alias.clone(),
                function: call.function.clone(),
                expected,
                got,
            }),
            Err(e) => errors.push(PlanError::InitArgType {
                package: s.package.clone(),
                alias: s.alias.clone(),
                function: call.function.clone(),
                param: String::new(),
                expected: e.to_string(),
                got: got_of(String::new()),
                from,
            }),
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
