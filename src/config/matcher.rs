//! The lookup tree of one domain and the walk that matches a request descriptor against it.
//!
//! Each level answers "which configured descriptor does this (key, value) select" in the
//! reference's order: the exact value, then the first wildcard value (in config order) that
//! matches, then the key-only descriptor. Lookups borrow the request's strings, so matching a
//! descriptor allocates nothing; it runs for every descriptor of every request.

use super::glob::Glob;
use crate::fast_map::FastMap;

/// One level of descriptors: the children of a domain or of a descriptor.
#[derive(Debug, Default)]
pub(crate) struct Level {
    /// The descriptors in config order: what render, fingerprint and rules() walk.
    pub(crate) nodes: Vec<Node>,
    /// Per key, where to find the node for a value.
    by_key: FastMap<Box<str>, KeyBranch>,
}

#[derive(Debug, Default)]
struct KeyBranch {
    exact: FastMap<Box<str>, usize>,
    /// Config order: the first matching pattern wins.
    wildcards: Vec<(Glob, usize)>,
    key_only: Option<usize>,
}

/// One configured descriptor.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) key: Box<str>,
    /// `None` for a key-only descriptor (no value, or an empty one, as in the reference).
    pub(crate) value: Option<Box<str>>,
    /// Index into the config's rules; `None` for a placeholder or a whitelist entry.
    pub(crate) rule: Option<usize>,
    /// How many rules from `rule` on are this descriptor's: 1, or the length of its
    /// `rate_limits` list (they are consecutive in the config's rules).
    pub(crate) rule_count: usize,
    pub(crate) children: Level,
}

impl Level {
    /// Adds a node; the builder has already refused duplicate (key, value) pairs.
    pub(crate) fn push(&mut self, node: Node) {
        let index = self.nodes.len();
        let branch = self.by_key.entry(node.key.clone()).or_default();
        match &node.value {
            None => branch.key_only = Some(index),
            Some(value) => match Glob::new(value) {
                Some(glob) => branch.wildcards.push((glob, index)),
                None => {
                    branch.exact.insert(value.clone(), index);
                }
            },
        }
        self.nodes.push(node);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node selected by one request entry at this level.
    fn find(&self, key: &str, value: &str) -> Option<&Node> {
        let branch = self.by_key.get(key)?;
        let index = branch
            .exact
            .get(value)
            .copied()
            .or_else(|| {
                branch
                    .wildcards
                    .iter()
                    .find(|(glob, _)| glob.matches(value))
                    .map(|(_, i)| *i)
            })
            .or(branch.key_only)?;
        self.nodes.get(index)
    }

    /// The rule index (and count) for a whole request descriptor, walking one level per entry.
    ///
    /// Depth-exact, as in the reference: only the node reached by the last entry counts, so a
    /// parent's limit never applies to a longer descriptor, and a walk that runs out of levels
    /// before the entries run out matches nothing.
    pub(crate) fn lookup<'b>(
        &self,
        entries: impl IntoIterator<Item = (&'b str, &'b str)>,
    ) -> Option<(usize, usize)> {
        let mut level = Some(self);
        let mut reached = None;
        for (key, value) in entries {
            let node = level?.find(key, value)?;
            level = (!node.children.is_empty()).then_some(&node.children);
            reached = Some(node);
        }
        let node = reached?;
        node.rule.map(|i| (i, node.rule_count))
    }
}
