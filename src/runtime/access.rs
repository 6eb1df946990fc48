//! Who may call what: private functions (issue 16).
//!
//! A package marks functions of its services private in `distro.toml`
//! (`private = ["set-wallet-key"]`); the functions toolchains add to a
//! component (componentize-py's `exports#init`, exported `wasi:` interfaces)
//! are private by default. A private function is callable by the deployer's
//! init calls and by spells of the package that deployed the service, and by
//! nobody else: API clients and spells of other packages get
//! [`CallError::PrivateFunction`] (HTTP 403, code `private_function`).
//!
//! The deployer installs the [`AccessTable`] (from the desired state) before
//! the API serves and again before every deployment; the runtime enforces it
//! on every call whose [`CallOrigin`] is not an init call.

use super::{CallError, Runtime};
use crate::ids::{Alias, PackageName};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Where a call comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOrigin {
    /// An API client (`POST /v1/services/{alias}/call/{function}`, `sysdeploy call`).
    Api,
    /// The deployer's init calls: may call anything.
    Init,
    /// A spell run, with the package that deployed the spell (`None`: a
    /// spell no package of the desired state deployed).
    Spell(Option<PackageName>),
}

/// The access rules of one service alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccess {
    /// The package that deploys the service: its spells may call private functions.
    pub package: PackageName,
    /// Private functions as the manifest names them, or resolved to the
    /// export's full name (`iface#name`) when the exports were known.
    pub private: BTreeSet<String>,
}

/// Access rules of every service and the package of every spell, by alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessTable {
    pub services: HashMap<Alias, ServiceAccess>,
    pub spells: HashMap<Alias, PackageName>,
}

impl AccessTable {
    /// The package that deployed the spell `alias`.
    pub fn spell_package(&self, alias: &Alias) -> Option<&PackageName> {
        self.spells.get(alias)
    }
}

/// Whether an export is one a toolchain adds rather than a function of the
/// service: componentize-py's `exports` interface (`exports#init`, its
/// pre-initialisation entry point), any `componentize-*` interface, and
/// exported `wasi:` interfaces (`wasi:cli/run#run`,
/// `wasi:http/incoming-handler#handle`), which are world plumbing.
pub fn is_toolchain_internal(export: &str) -> bool {
    let Some((iface, _)) = export.rsplit_once('#') else { return false };
    iface == "exports" || iface.starts_with("componentize-") || iface.starts_with("wasi:")
}

/// Whether `export` (the full export name) is private for `access`: listed
/// by its full name, listed by its bare name (a manifest entry that was not
/// resolved against the exports), or a toolchain internal.
pub fn is_private(access: Option<&ServiceAccess>, export: &str) -> bool {
    if is_toolchain_internal(export) {
        return true;
    }
    let Some(a) = access else { return false };
    if a.private.contains(export) {
        return true;
    }
    let bare = export.rsplit('#').next().unwrap_or(export);
    bare != export && a.private.contains(bare)
}

impl Runtime {
    /// Replaces the access table (the deployer calls it with the desired state's).
    pub fn set_access(&self, table: AccessTable) {
        *self.inner.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The access table in force.
    pub fn access(&self) -> Arc<AccessTable> {
        self.inner.access.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The access rules of the service `alias_or_id` names: by alias, or for
    /// an id by an alias bound to that service.
    fn service_access<'t>(&self, table: &'t AccessTable, alias_or_id: &str) -> Option<&'t ServiceAccess> {
        if let Ok(alias) = Alias::new(alias_or_id) {
            if let Some(a) = table.services.get(&alias) {
                return Some(a);
            }
        }
        // By id (rare): through an alias bound to the service.
        let slot = self.inner.resolve_slot(alias_or_id)?;
        let target = super::AliasTarget::Service(slot.row.id.clone());
        let aliases = self.aliases();
        aliases.iter().filter(|b| b.target == target).find_map(|b| table.services.get(&b.alias))
    }

    /// Calls `function` as `origin` may: [`Runtime::call`] after the access
    /// check. API clients and spells of other packages get
    /// `private_function` for a private function, and a list of the public
    /// functions when the name is unknown.
    pub async fn call_as(
        &self,
        origin: &CallOrigin,
        alias_or_id: &str,
        function: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        if *origin != CallOrigin::Init {
            self.check_access(origin, alias_or_id, function).await?;
        }
        self.call(alias_or_id, function, args).await
    }

    async fn check_access(&self, origin: &CallOrigin, alias_or_id: &str, function: &str) -> Result<(), CallError> {
        // Unknown targets and link failures are left to the call itself.
        let Some(slot) = self.inner.resolve_slot(alias_or_id) else { return Ok(()) };
        let Ok(prepared) = self.inner.prepared_async(&slot.row.blueprint_id).await else { return Ok(()) };
        let table = self.access();
        let access = self.service_access(&table, alias_or_id);
        let same_package = matches!((origin, access), (CallOrigin::Spell(Some(p)), Some(a)) if *p == a.package);
        if same_package {
            return Ok(());
        }
        let Some(export) = prepared.exports.find(function) else {
            let public: Vec<&str> = prepared.exports.fns.iter().map(|f| f.sig.name.as_str()).filter(|n| !is_private(access, n)).collect();
            return Err(CallError::UnknownFunction {
                target: alias_or_id.to_string(),
                function: function.to_string(),
                available: if public.is_empty() { "nothing".into() } else { public.join(", ") },
            });
        };
        if !is_private(access, &export.sig.name) {
            return Ok(());
        }
        let owner = access.map_or_else(|| "the package that deployed it".to_string(), |a| format!("package {}", a.package));
        let who = match origin {
            CallOrigin::Api => "API clients".to_string(),
            CallOrigin::Spell(Some(p)) => format!("spells of package {p}"),
            CallOrigin::Spell(None) => "this spell".to_string(),
            CallOrigin::Init => unreachable!("init calls are not checked"),
        };
        Err(CallError::PrivateFunction {
            target: alias_or_id.to_string(),
            function: function.to_string(),
            reason: format!("{} is private to {owner}: only its init calls and its spells may call it, not {who}", export.sig.name),
        })
    }

    /// The public functions of a service (for listings): its exports minus
    /// the private ones.
    pub fn public_functions(&self, alias_or_id: &str) -> Option<Vec<super::FunctionSig>> {
        let sigs = self.service_exports(alias_or_id)?.ok()?;
        let table = self.access();
        let access = self.service_access(&table, alias_or_id);
        Some(sigs.into_iter().filter(|s| !is_private(access, &s.name)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_internals_and_listed_names_are_private() {
        assert!(is_toolchain_internal("exports#init"));
        assert!(is_toolchain_internal("wasi:cli/run@0.2.0#run"));
        assert!(is_toolchain_internal("componentize-py#CallIndirect"));
        assert!(!is_toolchain_internal("sysdeploy:registry/api#register"));
        assert!(!is_toolchain_internal("init"));
        let a = ServiceAccess {
            package: PackageName::new("decider").unwrap(),
            private: ["set-wallet-key".to_string(), "x:y/z#set-root".to_string()].into(),
        };
        assert!(is_private(Some(&a), "set-wallet-key"));
        assert!(is_private(Some(&a), "sysdeploy:decider/api#set-wallet-key"));
        assert!(is_private(Some(&a), "x:y/z#set-root"));
        assert!(!is_private(Some(&a), "set-root"));
        assert!(!is_private(Some(&a), "poll"));
        assert!(!is_private(None, "set-wallet-key"));
    }
}
