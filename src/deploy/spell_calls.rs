//! Spells checked against services at plan time (issue 16): what each alias
//! will be after the plan, and every literal `call(alias, function, args)` of
//! every desired spell checked against it (`spell::check`).

use super::model::{Current, Desired};
use super::plan::PlanError;
use crate::ids::{Alias, PeerId};
use crate::spell::check::{check_call, service_calls, Target};
use std::collections::BTreeMap;

/// Every problem of every desired spell's literal service calls.
pub(super) fn check(desired: &Desired, current: &Current, host: &PeerId, errors: &mut Vec<PlanError>) {
    let mut after: BTreeMap<&Alias, Target<'_>> = BTreeMap::new();
    // What others hold stays theirs (a desired alias they hold is a conflict).
    for (alias, h) in &current.aliases {
        if h.owner != *host {
            after.insert(alias, if h.kind == "spell" { Target::Spell } else { Target::Unchecked });
        }
    }
    for p in &desired.packages {
        for s in &p.services {
            if !after.contains_key(&s.alias) {
                let t = desired.exports.get(&s.blueprint_id).map_or(Target::Unchecked, |sigs| Target::Service(sigs));
                after.insert(&s.alias, t);
            }
        }
        for sp in &p.spells {
            after.entry(&sp.alias).or_insert(Target::Spell);
        }
    }
    let services: Vec<&str> = after.iter().filter(|(_, t)| !matches!(t, Target::Spell)).map(|(a, _)| a.as_str()).collect();
    let known = if services.is_empty() { "none".to_string() } else { services.join(", ") };
    let mut access = None;
    for p in &desired.packages {
        for sp in &p.spells {
            // A script that does not compile was refused with the desired state.
            let Ok(calls) = service_calls(&sp.script) else { continue };
            let access = access.get_or_insert_with(|| super::access::table(desired));
            for call in calls {
                let target = Alias::new(&call.alias).ok().and_then(|a| after.get(&a).map(copy_target));
                let problem = match check_call(&call, target, &known) {
                    Err(problem) => Some(problem),
                    Ok(Some(export)) => {
                        let owner = Alias::new(&call.alias).ok().and_then(|a| access.services.get(&a));
                        match owner {
                            Some(o) if o.package != sp.package && crate::runtime::is_private(Some(o), &export) => Some(format!(
                                "{export} is private to package {}: only its init calls and its spells may call it",
                                o.package
                            )),
                            _ => None,
                        }
                    }
                    Ok(None) => None,
                };
                if let Some(problem) = problem {
                    errors.push(PlanError::SpellCall {
                        package: sp.package.clone(),
                        spell: sp.alias.clone(),
                        line: call.line,
                        alias: call.alias.clone(),
                        function: call.function.clone(),
                        problem,
                    });
                }
            }
        }
    }
}

fn copy_target<'a>(t: &Target<'a>) -> Target<'a> {
    match t {
        Target::Service(s) => Target::Service(s),
        Target::Unchecked => Target::Unchecked,
        Target::Spell => Target::Spell,
    }
}
