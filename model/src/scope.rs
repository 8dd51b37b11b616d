//! Which workloads a namespaced resource applies to, and how closely: the one precedence
//! rule PeerAuthentication, AuthorizationPolicy, InboundPorts and DestinationRule share.
//! A resource selecting the workload by label in its namespace is closest, then one for
//! its whole namespace, then the mesh-wide ones in the root namespace. Each kind then says
//! which of these reaches it honours (as Istio does for each).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::workload::Workload;

/// The mesh-wide configuration namespace (Istio's default root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Where a resource lives and which of that namespace's workloads it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub namespace: String,
    /// `matchLabels`; None covers the whole namespace (or the mesh, in the root
    /// namespace).
    pub selector: Option<BTreeMap<String, String>>,
}

/// How closely a resource applies to a workload; the closest sorts first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// In the workload's namespace, selecting it by label.
    Workload,
    /// In the workload's namespace, without a selector.
    Namespace,
    /// In the root namespace, selecting it by label across namespaces (AuthorizationPolicy
    /// and InboundPorts honour it; PeerAuthentication and DestinationRule selectors do not
    /// cross namespaces).
    MeshSelected,
    /// In the root namespace, without a selector.
    Mesh,
}

impl Scope {
    /// How closely this scope reaches `workload`; None when it does not.
    pub fn reach(&self, workload: &Workload) -> Option<Reach> {
        reach(&self.namespace, self.selector.as_ref(), workload)
    }
}

/// `Scope::reach` for resources that keep the namespace and selector apart.
pub fn reach(
    namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
    workload: &Workload,
) -> Option<Reach> {
    let own = namespace == workload.namespace;
    if !own && namespace != ROOT_NAMESPACE {
        return None;
    }
    match selector {
        Some(labels)
            if !labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v)) =>
        {
            None
        }
        Some(_) if own => Some(Reach::Workload),
        Some(_) => Some(Reach::MeshSelected),
        None if own => Some(Reach::Namespace),
        None => Some(Reach::Mesh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(namespace: &str) -> Workload {
        crate::workload::test_workload(namespace, "b")
    }

    fn scope(namespace: &str, app: Option<&str>) -> Scope {
        Scope {
            namespace: namespace.into(),
            selector: app.map(|a| [("app".to_string(), a.to_string())].into()),
        }
    }

    #[test]
    fn the_closest_scope_sorts_first_and_others_do_not_reach() {
        let b = workload("shop");
        let reaches: Vec<Option<Reach>> = [
            scope("shop", Some("b")),
            scope("shop", None),
            scope(ROOT_NAMESPACE, Some("b")),
            scope(ROOT_NAMESPACE, None),
            scope("shop", Some("c")),
            scope("other", None),
            scope("other", Some("b")),
        ]
        .iter()
        .map(|s| s.reach(&b))
        .collect();
        assert_eq!(
            reaches,
            [
                Some(Reach::Workload),
                Some(Reach::Namespace),
                Some(Reach::MeshSelected),
                Some(Reach::Mesh),
                None,
                None,
                None
            ]
        );
        assert!(reaches.is_sorted_by_key(|r| r.unwrap_or(Reach::Mesh)));
    }

    #[test]
    fn in_the_root_namespace_its_own_workloads_are_selected_as_in_any_namespace() {
        let w = workload(ROOT_NAMESPACE);
        assert_eq!(
            scope(ROOT_NAMESPACE, Some("b")).reach(&w),
            Some(Reach::Workload)
        );
        assert_eq!(
            scope(ROOT_NAMESPACE, None).reach(&w),
            Some(Reach::Namespace)
        );
    }
}
