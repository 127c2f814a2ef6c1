//! Which rules may apply to a call, found by index: the rate limits and quotas
//! each keep one, so an admission visits the rules of its own service and agent
//! and the rules for everyone, never the thousands written for other services
//! or agents (issue 16: 100,000 rules cost ~3 ms per admission under the engine
//! lock when every one was tested).
//!
//! A rule is filed by its filters (`services`, `agents`), not by its scope (the
//! scope only says which bucket it counts in): a rule that names services is
//! filed under each of them, one that names only agents under each agent, one
//! that names neither applies to everyone. A rule naming both services and
//! agents is filed by service, and its agent list is tested on the visit.
//! Candidates come back in file order (the order votes are cast and a denial
//! stops the pipeline), merged from the three sorted lists without allocating.

use std::collections::HashMap;

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Rule positions filed by what they apply to.
#[derive(Debug, Default)]
pub struct RuleIndex {
    everyone: Vec<u32>,
    by_service: Map<Vec<u32>>,
    by_agent: Map<Vec<u32>>,
}

/// The positions of the rules that may apply to one call, ascending.
pub struct Candidates<'a> {
    lists: [&'a [u32]; 3],
}

// === impl RuleIndex ===

impl RuleIndex {
    /// Files each rule, given in file order as its (services, agents) filters.
    pub fn new<'a>(rules: impl IntoIterator<Item = (&'a [String], &'a [String])>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (pos, (services, agents)) in rules.into_iter().enumerate() {
            let pos = u32::try_from(pos).expect("rule counts are capped far below u32::MAX");
            if !services.is_empty() {
                file(&mut index.by_service, services, pos);
            } else if !agents.is_empty() {
                file(&mut index.by_agent, agents, pos);
            } else {
                index.everyone.push(pos);
            }
        }
        index
    }

    /// The rules that may apply to a call by `agent` to `service`, in file
    /// order; the caller still tests each (`applies`) for rules that name both
    /// services and agents.
    pub fn candidates(&self, agent: &str, service: &str) -> Candidates<'_> {
        let by_service = self.by_service.get(service).map_or(&[][..], Vec::as_slice);
        let by_agent = self.by_agent.get(agent).map_or(&[][..], Vec::as_slice);
        Candidates {
            lists: [&self.everyone, by_service, by_agent],
        }
    }
}

/// Files `pos` under each name in `names` (once, if a list repeats a name).
fn file(map: &mut Map<Vec<u32>>, names: &[String], pos: u32) {
    for name in names {
        let list = map.entry(Box::from(name.as_str())).or_default();
        if list.last() != Some(&pos) {
            list.push(pos);
        }
    }
}

// === impl Candidates ===

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        // The smallest head of the three ascending lists; a rule is filed in
        // one list only, so heads never tie.
        let (which, pos) = self
            .lists
            .iter()
            .enumerate()
            .filter_map(|(which, list)| list.first().map(|pos| (which, *pos)))
            .min_by_key(|(_, pos)| *pos)?;
        self.lists[which] = &self.lists[which][1..];
        Some(pos as usize)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.lists.iter().map(|l| l.len()).sum();
        (n, Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(specs: &[(&[&str], &[&str])]) -> Vec<(Vec<String>, Vec<String>)> {
        let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        specs.iter().map(|(s, a)| (owned(s), owned(a))).collect()
    }

    fn index(rules: &[(Vec<String>, Vec<String>)]) -> RuleIndex {
        RuleIndex::new(rules.iter().map(|(s, a)| (s.as_slice(), a.as_slice())))
    }

    #[test]
    fn candidates_are_the_rules_for_everyone_the_service_and_the_agent_in_file_order() {
        let rules = rules(&[
            (&["s"], &[]),
            (&[], &[]),
            (&[], &["a"]),
            (&["t"], &[]),
            (&["s", "t", "s"], &["b"]),
            (&[], &["b"]),
            (&[], &[]),
        ]);
        let index = index(&rules);
        let got: Vec<usize> = index.candidates("a", "s").collect();
        assert_eq!(
            got,
            [0, 1, 2, 4, 6],
            "rule 4 names s (its agent list is tested on the visit)"
        );
        let got: Vec<usize> = index.candidates("b", "t").collect();
        assert_eq!(got, [1, 3, 4, 5, 6]);
        let got: Vec<usize> = index.candidates("z", "u").collect();
        assert_eq!(got, [1, 6]);
    }

    #[test]
    fn a_call_visits_no_rule_written_for_other_services_or_agents() {
        let mut specs = Vec::new();
        for n in 0..100_000 {
            if n % 2 == 0 {
                specs.push((vec![format!("service-{n}")], Vec::new()));
            } else {
                specs.push((Vec::new(), vec![format!("agent-{n}")]));
            }
        }
        specs.push((vec!["llm".to_owned()], Vec::new()));
        specs.push((Vec::new(), Vec::new()));
        let index = index(&specs);
        let visited = index.candidates("planner", "llm").count();
        assert_eq!(visited, 2, "the rule for llm and the one for everyone");
        assert_eq!(index.candidates("agent-1", "service-0").count(), 3);
    }
}
