//! The runtime's access table (private functions, issue 16) from the desired
//! state, and the plan-time check that every function a manifest marks
//! private is exported.

use super::model::{Desired, DesiredService};
use super::plan::{find_export, PlanError};
use crate::runtime::{AccessTable, FunctionSig, ServiceAccess};

/// Every desired service's private functions (resolved to the export's full
/// name when its exports are known) and every desired spell's package.
pub fn table(desired: &Desired) -> AccessTable {
    let mut t = AccessTable::default();
    for p in &desired.packages {
        for s in &p.services {
            let sigs = desired.exports.get(&s.blueprint_id);
            let mut private: std::collections::BTreeSet<String> = s
                .private
                .iter()
                .map(|f| sigs.and_then(|sigs| find_export(sigs, f)).map_or_else(|| f.clone(), |sig| sig.name.clone()))
                .collect();
            // `migrate` is the deployer's (issue 17): never callable through the API.
            private.insert(
                sigs.and_then(|sigs| super::migrate::find(sigs))
                    .map_or_else(|| super::migrate::FUNCTION.to_string(), |sig| sig.name.clone()),
            );
            t.services.insert(s.alias.clone(), ServiceAccess { package: s.package.clone(), private });
        }
        for sp in &p.spells {
            t.spells.insert(sp.alias.clone(), sp.package.clone());
        }
    }
    t
}

/// A private function the service does not export is a mistake that would
/// leave the real one public: refused at plan time.
pub(super) fn check_private(s: &DesiredService, sigs: Option<&Vec<FunctionSig>>, errors: &mut Vec<PlanError>) {
    let Some(sigs) = sigs else { return };
    for f in &s.private {
        if find_export(sigs, f).is_none() {
            errors.push(PlanError::UnknownPrivateFunction {
                package: s.package.clone(),
                alias: s.alias.clone(),
                function: f.clone(),
                available: sigs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
    }
}
