//! The two inputs of the planner as plain data: the *desired* state (what
//! config + distros ask for) and the *current* state (what the store says is
//! deployed). Both are built elsewhere (`deploy::desired`, `deploy::current`);
//! the planner only compares them.

use crate::ids::{Alias, BlueprintId, ComponentHash, PackageName, PeerId, ServiceId};
use crate::runtime::{Blueprint, FunctionSig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// When an init call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitRun {
    /// Only when the service is created.
    OnInstall,
    /// On create and whenever its resolved arguments change (the default).
    OnChange,
}

/// What a changed init argument does to a deployed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigChange {
    /// Call the init functions again on the same service.
    Reinit,
    /// The service cannot be re-initialised: build a new one (blue-green).
    Replace,
}

/// A config value that fed a template, remembered so a plan can say which
/// key changed and where its new value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInput {
    /// `system_services.registry.expired_period_sec`
    pub key: String,
    /// `default`, `/etc/sysdeploy.toml:12`, `env SYSDEPLOY_...`
    pub source: String,
    pub secret: bool,
}

/// One init call with its arguments resolved to JSON values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedInit {
    pub function: String,
    pub args: Vec<serde_json::Value>,
    pub run: InitRun,
    /// The config keys the arguments were made from.
    pub inputs: Vec<ConfigInput>,
}

impl ResolvedInit {
    /// True when any argument came from a secret: its values never leave the
    /// process (no Debug, no plan output, only a digest in the store).
    pub fn is_secret(&self) -> bool {
        self.inputs.iter().any(|i| i.secret)
    }
    /// What is remembered of this call in the store: function + args, or a
    /// digest of the args when they are secret.
    pub fn fingerprint(&self) -> serde_json::Value {
        let args = serde_json::to_vec(&self.args).expect("json");
        if self.is_secret() {
            serde_json::json!({ "function": self.function, "args_digest": blake3::hash(&args).to_hex().to_string() })
        } else {
            serde_json::json!({ "function": self.function, "args": self.args })
        }
    }
}

impl std::fmt::Debug for ResolvedInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ResolvedInit");
        d.field("function", &self.function);
        if self.is_secret() {
            d.field("args", &"<redacted>");
        } else {
            d.field("args", &self.args);
        }
        d.field("run", &self.run).finish()
    }
}

/// A service the config + distros ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredService {
    pub alias: Alias,
    pub package: PackageName,
    pub version: String,
    /// Components (facade last) and their settings.
    pub blueprint: Blueprint,
    /// `blueprint.id()`, computed once.
    pub blueprint_id: BlueprintId,
    pub keep_data: bool,
    pub on_config_change: ConfigChange,
    pub init: Vec<ResolvedInit>,
    /// Functions only init calls and this package's spells may call (issue 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private: Vec<String>,
    /// Keep the data dir of the service this one replaces, as it was when the
    /// alias moved (`snapshot_before_replace`, issue 17).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_before_replace: bool,
    /// `rollback --restore-data` (issue 17): a replace or install of this alias
    /// starts from the data dir kept when that service was replaced away,
    /// not from the data of the service bound now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_data_from: Option<ServiceId>,
}

impl DesiredService {
    /// `(name, hash)` of each component, facade last; for reasons.
    pub fn components(&self) -> Vec<(String, ComponentHash)> {
        self.blueprint.components.iter().map(|c| (c.name.clone(), c.hash)).collect()
    }
    /// Digest of what the on-change init calls would do; a change means
    /// reinit (or replace). On-install calls are not part of it.
    pub fn init_hash(&self) -> String {
        init_hash(self.init.iter().filter(|i| i.run == InitRun::OnChange))
    }
    /// Fingerprints of the on-change init calls, stored for later reasons.
    pub fn init_snapshot(&self) -> Vec<serde_json::Value> {
        self.init.iter().filter(|i| i.run == InitRun::OnChange).map(|i| i.fingerprint()).collect()
    }
}

/// blake3 over the canonical JSON of the calls (function + args).
pub fn init_hash<'a>(calls: impl Iterator<Item = &'a ResolvedInit>) -> String {
    let mut h = blake3::Hasher::new();
    for c in calls {
        h.update(&serde_json::to_vec(&(&c.function, &c.args)).expect("json"));
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// A clock trigger with its values resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredTrigger {
    /// `None` = start now; `Some(t)` = unix seconds.
    pub start: Option<u64>,
    /// 0 = run once.
    pub period_sec: u64,
    pub end: Option<u64>,
}

/// A spell the config + distros ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredSpell {
    pub alias: Alias,
    pub package: PackageName,
    pub version: String,
    /// blake3 hex of the script.
    pub script_hash: String,
    /// The Rhai source.
    pub script: String,
    pub trigger: DesiredTrigger,
    /// Initial/configured KV. Keys listed in `secret_keys` are never shown.
    pub kv: BTreeMap<String, serde_json::Value>,
    pub secret_keys: Vec<String>,
    /// For reasons: which config keys fed which KV key.
    pub kv_inputs: BTreeMap<String, Vec<ConfigInput>>,
}

/// One enabled package, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredPackage {
    pub name: PackageName,
    pub version: String,
    pub depends_on: Vec<PackageName>,
    /// The oldest deployed version this release migrates from (`migrates_from`
    /// in `distro.toml`, issue 17): an older deployed version is a plan error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrates_from: Option<String>,
    pub services: Vec<DesiredService>,
    pub spells: Vec<DesiredSpell>,
}

/// Everything the config + distros ask for, packages in dependency order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Desired {
    pub packages: Vec<DesiredPackage>,
    /// Facade exports of each desired blueprint, for type-checking init args.
    /// A blueprint missing here is not checked (the executor still fails
    /// cleanly on a bad call).
    pub exports: BTreeMap<BlueprintId, Vec<FunctionSig>>,
    /// Every package the catalog knows, enabled or not, in dependency order:
    /// removals run in the reverse of it (dependents before dependencies).
    pub catalog_order: Vec<PackageName>,
}

/// What the deployer recorded about an alias it deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeployedKind {
    Service {
        service_id: ServiceId,
        blueprint_id: BlueprintId,
        components: Vec<(String, ComponentHash)>,
        init_hash: String,
        /// Fingerprints of the on-change init calls last applied.
        init_snapshot: Vec<serde_json::Value>,
    },
    Spell {
        spell_id: String,
        script_hash: String,
        trigger: DesiredTrigger,
        /// The configured KV as last applied (three-way merge base). Secret
        /// keys are stored as a digest.
        kv_applied: BTreeMap<String, serde_json::Value>,
    },
}

/// One row of the deployer's own bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub alias: Alias,
    pub package: PackageName,
    pub version: String,
    pub kind: DeployedKind,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Who holds an alias, whoever deployed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasHolder {
    pub owner: PeerId,
    /// `service` or `spell`
    pub kind: String,
    pub target: String,
}

/// A service as the runtime's records show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedService {
    pub owner: PeerId,
    pub blueprint_id: BlueprintId,
    /// Unix seconds.
    pub created_at: i64,
}

/// A spell as the spell layer's records show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedSpell {
    pub id: String,
    pub owner: PeerId,
}

/// The one observed truth `plan` and `recover` share (built by
/// `deploy::observed::observe`): the deployer's entries (what it recorded)
/// joined with what actually exists — every bound alias, every service and
/// every spell. Where the two disagree the planner makes a repair step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Current {
    pub host: Option<PeerId>,
    /// What the deployer recorded, per alias.
    pub deployed: BTreeMap<Alias, Deployed>,
    /// Every bound alias and who holds it.
    pub aliases: BTreeMap<Alias, AliasHolder>,
    /// Every service the runtime knows.
    pub services: BTreeMap<ServiceId, ObservedService>,
    /// Every spell, by alias.
    pub spells: BTreeMap<Alias, ObservedSpell>,
    /// Data dirs kept from replaced services (`deploy::kept`, issue 17), by
    /// the id of the service they belonged to.
    #[serde(default)]
    pub kept: BTreeMap<ServiceId, KeptData>,
}

/// A data dir kept when its service was replaced (`snapshot_before_replace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptData {
    pub service_id: ServiceId,
    pub alias: Alias,
    pub package: PackageName,
    /// The package version the data was written by.
    pub version: String,
    pub blueprint_id: BlueprintId,
    /// Unix seconds.
    pub kept_at: i64,
}

impl Current {
    /// A host-owned spell or service the records say is deployed under
    /// `alias`, as it is observed: `None` when what is recorded does not
    /// exist.
    pub fn recorded_service(&self, alias: &Alias) -> Option<(&ServiceId, &ObservedService)> {
        match &self.deployed.get(alias)?.kind {
            DeployedKind::Service { service_id, .. } => self.services.get(service_id).map(|s| (service_id, s)),
            DeployedKind::Spell { .. } => None,
        }
    }
}
