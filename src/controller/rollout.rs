//! The rollout arithmetic of Deployments, as pure functions from numbers to numbers (Kubernetes'
//! `pkg/controller/deployment/util`): maxSurge/maxUnavailable rounding, the next size of the new
//! ReplicaSet, how many old pods may go, proportional scaling, the pod-template-hash and the
//! revision annotations. The controller (`controller::deployment`) only reads and writes.

use serde_json::{Map, Value};

/// The revision of a ReplicaSet (and of its Deployment: the revision of the new ReplicaSet).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a reused ReplicaSet had (a rollback), comma-separated, oldest first.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last sized this ReplicaSet.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last sized this ReplicaSet.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Label (and selector term) telling the ReplicaSets of one Deployment apart.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Kubernetes' `--deployment-controller` limit on the length of the revision-history annotation.
pub const REVISION_HISTORY_MAX_CHARS: usize = 2000;

/// An `IntOrString` field such as maxSurge: an absolute count or a percentage of replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i32),
    Percent(i32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {value} (expected an integer or a percentage such as \"25%\")")]
pub struct IntOrPercentError {
    pub field: String,
    pub value: String,
}

impl IntOrPercent {
    /// Parses `1` or `"25%"`; a missing field is `default`.
    pub fn from_json(
        value: Option<&Value>,
        field: &str,
        default: IntOrPercent,
    ) -> Result<IntOrPercent, IntOrPercentError> {
        let err = |v: &Value| IntOrPercentError {
            field: field.to_string(),
            value: v.to_string(),
        };
        match value {
            None | Some(Value::Null) => Ok(default),
            Some(v @ Value::Number(n)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| *n >= 0)
                .map(IntOrPercent::Int)
                .ok_or_else(|| err(v)),
            Some(v @ Value::String(s)) => s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i32>().ok())
                .filter(|p| *p >= 0)
                .map(IntOrPercent::Percent)
                .ok_or_else(|| err(v)),
            Some(v) => Err(err(v)),
        }
    }

    /// The absolute value for `total` replicas; a percentage rounds up or down as asked.
    ///
    /// 25% of 10 is 2.5: rounded up 3 (maxSurge), rounded down 2 (maxUnavailable).
    pub fn scaled(self, total: i32, round_up: bool) -> i32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let product = i64::from(p) * i64::from(total.max(0));
                let value = if round_up {
                    (product + 99) / 100
                } else {
                    product / 100
                };
                i32::try_from(value).unwrap_or(i32::MAX)
            }
        }
    }
}

/// maxSurge and maxUnavailable as absolute counts for one replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenceposts {
    pub max_surge: i32,
    pub max_unavailable: i32,
}

/// Resolves maxSurge (rounded up) and maxUnavailable (rounded down) for `replicas`.
///
/// 25%/25% on 10 replicas: surge ceil(2.5) = 3, unavailable floor(2.5) = 2.
/// 25%/25% on 3 replicas: surge ceil(0.75) = 1, unavailable floor(0.75) = 0.
/// Both resolving to 0 (e.g. 0/10% on 5) would block the rollout forever, so unavailable
/// becomes 1, as in Kubernetes.
pub fn resolve_fenceposts(
    max_surge: IntOrPercent,
    max_unavailable: IntOrPercent,
    replicas: i32,
) -> Fenceposts {
    let surge = max_surge.scaled(replicas, true);
    let unavailable = max_unavailable.scaled(replicas, false);
    if surge == 0 && unavailable == 0 {
        return Fenceposts {
            max_surge: 0,
            max_unavailable: 1,
        };
    }
    Fenceposts {
        max_surge: surge,
        max_unavailable: unavailable,
    }
}

/// maxUnavailable as the controller uses it: never more than the replicas, 0 for 0 replicas.
pub fn effective_max_unavailable(fenceposts: Fenceposts, replicas: i32) -> i32 {
    if replicas <= 0 {
        return 0;
    }
    fenceposts.max_unavailable.min(replicas)
}

/// The size the new ReplicaSet may grow to in one rolling step (Kubernetes' NewRSNewReplicas).
///
/// replicas 10, maxSurge 3, the ReplicaSets hold 10 old + 0 new pods: the total may reach 13,
/// so the new ReplicaSet grows by min(13 - 10, 10 - 0) = 3 to 3.
/// replicas 3, maxSurge 1, ReplicaSets hold 3 old + 1 new: 4 >= 3 + 1, the new one stays at 1.
pub fn new_replica_set_next_size(
    replicas: i32,
    max_surge: i32,
    all_pods: i32,
    new_replicas: i32,
) -> i32 {
    let max_total = replicas + max_surge;
    if all_pods >= max_total {
        return new_replicas;
    }
    let scale_up = (max_total - all_pods).min(replicas - new_replicas);
    new_replicas + scale_up.max(0)
}

/// One ReplicaSet as the scale-down arithmetic sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// New sizes of the old ReplicaSets (given oldest first, returned in the same order) in one
/// rolling step (Kubernetes' reconcileOldReplicaSets), in two phases.
///
/// First the budget: all pods - (replicas - maxUnavailable) - unavailable pods of the new
/// ReplicaSet. replicas 10, maxUnavailable 2, old 10 (all available) + new 3 (0 available):
/// 13 - 8 - 3 = 2 pods may go. Unavailable old pods go first, up to that budget (they count
/// for nothing, and would otherwise block a rollout: kubernetes#16737).
///
/// Then the available ones, counted from what is available now: available 10 (old) + 0 (new),
/// minimum 8: 2 more may go. The old ReplicaSet goes from 10 to 8.
pub fn old_replica_sets_next_sizes(
    old: &[ReplicaCounts],
    new: ReplicaCounts,
    replicas: i32,
    max_unavailable: i32,
) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|rs| rs.replicas).collect();
    let old_pods: i32 = sizes.iter().sum();
    if old_pods == 0 {
        return sizes;
    }
    let all_pods = old_pods + new.replicas;
    let min_available = replicas - max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let budget = all_pods - min_available - new_unavailable;
    if budget <= 0 {
        return sizes;
    }

    let mut cleaned = 0;
    for (size, rs) in sizes.iter_mut().zip(old) {
        if cleaned >= budget {
            break;
        }
        let unhealthy = rs.replicas - rs.available;
        if rs.replicas == 0 || unhealthy <= 0 {
            continue;
        }
        let down = (budget - cleaned).min(unhealthy);
        *size -= down;
        cleaned += down;
    }

    let available: i32 = old.iter().map(|rs| rs.available).sum::<i32>() + new.available;
    if available <= min_available {
        return sizes;
    }
    let allowed = available - min_available;
    let mut scaled = 0;
    for size in sizes.iter_mut() {
        if scaled >= allowed {
            break;
        }
        if *size == 0 {
            continue;
        }
        let down = (*size).min(allowed - scaled);
        *size -= down;
        scaled += down;
    }
    sizes
}

/// One active ReplicaSet as proportional scaling sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProportionalShare {
    /// `spec.replicas`.
    pub replicas: i32,
    /// The `max-replicas` annotation: the Deployment's replicas + maxSurge when it last sized it.
    pub max_replicas: Option<i32>,
}

/// The change of one ReplicaSet's size when its Deployment now allows `allowed_total` pods
/// (replicas + maxSurge), scaled by its share of the total it was sized for
/// (Kubernetes' getReplicaSetFraction). Without the annotation, the Deployment's current
/// `status.replicas` stands in.
///
/// A ReplicaSet of 8 sized when 13 were allowed, now 19 allowed: round(8 * 19 / 13) =
/// round(11.69) = 12, a change of +4.
pub fn replica_set_fraction(
    share: ProportionalShare,
    deployment_replicas: i32,
    allowed_total: i32,
    status_replicas: i32,
) -> i32 {
    if deployment_replicas == 0 {
        return -share.replicas;
    }
    let annotated = share.max_replicas.unwrap_or(status_replicas);
    if annotated <= 0 {
        return 0;
    }
    let size = f64::from(share.replicas) * f64::from(allowed_total) / f64::from(annotated);
    // f64::round rounds half away from zero, as Go's math.Round.
    size.round() as i32 - share.replicas
}

/// How much of the remaining `to_add - added` one ReplicaSet takes (Kubernetes' GetProportion):
/// its fraction, capped by what is left in the direction of the change.
pub fn proportion(share: ProportionalShare, fraction: i32, to_add: i32, added: i32) -> i32 {
    if share.replicas == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let left = to_add - added;
    if to_add > 0 {
        fraction.min(left)
    } else {
        fraction.max(left)
    }
}

/// New sizes of the active ReplicaSets (given oldest first, returned in the same order) when a
/// Deployment is scaled in the middle of a rollout: each grows or shrinks by its share, the
/// rounding leftover goes to the largest one (Kubernetes' scale, RollingUpdate branch).
///
/// replicas 10 -> 15 with maxSurge 25%: allowed 15 + 4 = 19; old 8 and new 5 (both sized for
/// 13) hold 13, so 6 are to add. Largest first: old +4 (round(8*19/13) = 12), new
/// min(round(5*19/13) - 5, 6 - 4) = +2: old 12, new 7, no leftover.
pub fn proportional_sizes(
    shares: &[ProportionalShare],
    deployment_replicas: i32,
    max_surge: i32,
    status_replicas: i32,
) -> Vec<i32> {
    let mut sizes: Vec<i32> = shares.iter().map(|s| s.replicas).collect();
    let allowed_total = if deployment_replicas > 0 {
        deployment_replicas + max_surge
    } else {
        0
    };
    let to_add = allowed_total - sizes.iter().sum::<i32>();
    if to_add == 0 || shares.is_empty() {
        return sizes;
    }
    // Largest first; among equals the newest first when growing and the oldest first when
    // shrinking, so that a scale-up favours the new template and a scale-down the old pods go.
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        shares[b]
            .replicas
            .cmp(&shares[a].replicas)
            .then(if to_add > 0 { b.cmp(&a) } else { a.cmp(&b) })
    });
    let mut added = 0;
    for &i in &order {
        let fraction = replica_set_fraction(
            shares[i],
            deployment_replicas,
            allowed_total,
            status_replicas,
        );
        let part = proportion(shares[i], fraction, to_add, added);
        sizes[i] += part;
        added += part;
    }
    if let Some(&largest) = order.first() {
        sizes[largest] = (sizes[largest] + to_add - added).max(0);
    }
    sizes
}

/// The pod-template-hash of a template: FNV-1a (32 bit) of its canonical JSON (keys sorted,
/// no spaces), then of the collisionCount as 8 little-endian bytes when there is one, written
/// as a decimal string and mapped through Kubernetes' SafeEncodeString (no vowels, no 0/1/3,
/// so that a hash never spells a word).
pub fn pod_template_hash(template: &Value, collision_count: Option<i32>) -> String {
    let mut bytes = Vec::new();
    write_canonical(template, &mut bytes);
    let mut hash = fnv1a_32(0x811c_9dc5, &bytes);
    if let Some(count) = collision_count {
        let mut extra = [0u8; 8];
        extra[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hash = fnv1a_32(hash, &extra);
    }
    safe_encode(&hash.to_string())
}

fn fnv1a_32(mut hash: u32, bytes: &[u8]) -> u32 {
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Kubernetes' rand.SafeEncodeString: each byte picks a letter of this alphabet.
pub fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// JSON with object keys sorted at every level, whatever order the map keeps.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::from(k.as_str()).to_string().as_bytes());
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// A pod template without the pod-template-hash label (and without an emptied labels map).
pub fn template_without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(Value::Object(labels)) = t.pointer_mut("/metadata/labels") {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
        if labels.is_empty()
            && let Some(Value::Object(meta)) = t.get_mut("metadata")
        {
            meta.remove("labels");
        }
    }
    t
}

/// Whether two pod templates are the same apart from the pod-template-hash label
/// (Kubernetes' EqualIgnoreHash): how the new ReplicaSet of a Deployment is found.
pub fn templates_equal_ignoring_hash(a: &Value, b: &Value) -> bool {
    template_without_hash(a) == template_without_hash(b)
}

/// The revision annotation as a number; missing or unreadable is 0.
pub fn revision_of(object: &Value) -> i64 {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Moves a ReplicaSet's annotations to `new_revision` when it is higher than its own, keeping
/// the revisions it had in the revision-history annotation (a rollback reuses a ReplicaSet:
/// revision 1 becomes 4 with history "1"). The history is trimmed from its oldest end to
/// `REVISION_HISTORY_MAX_CHARS`. Returns whether anything changed.
pub fn advance_revision(annotations: &mut Map<String, Value>, new_revision: i64) -> bool {
    let old = annotations
        .get(REVISION_ANNOTATION)
        .and_then(Value::as_str)
        .map(str::to_string);
    let old_number = old
        .as_deref()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    if old_number >= new_revision {
        return false;
    }
    annotations.insert(
        REVISION_ANNOTATION.into(),
        Value::from(new_revision.to_string()),
    );
    if let Some(old) = old.filter(|s| !s.is_empty()) {
        let history = annotations
            .get(REVISION_HISTORY_ANNOTATION)
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut revisions: Vec<&str> = history.split(',').filter(|s| !s.is_empty()).collect();
        revisions.push(&old);
        while revisions.join(",").len() > REVISION_HISTORY_MAX_CHARS && revisions.len() > 1 {
            revisions.remove(0);
        }
        let joined = revisions.join(",");
        annotations.insert(REVISION_HISTORY_ANNOTATION.into(), Value::from(joined));
    }
    true
}

/// Sets the desired-replicas and max-replicas annotations; returns whether they changed.
pub fn set_replicas_annotations(
    annotations: &mut Map<String, Value>,
    desired: i32,
    max_replicas: i32,
) -> bool {
    let mut changed = false;
    for (key, value) in [
        (DESIRED_REPLICAS_ANNOTATION, desired),
        (MAX_REPLICAS_ANNOTATION, max_replicas),
    ] {
        let value = Value::from(value.to_string());
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            changed = true;
        }
    }
    changed
}

/// An integer annotation (desired-replicas, max-replicas).
pub fn int_annotation(object: &Value, key: &str) -> Option<i32> {
    object
        .pointer("/metadata/annotations")?
        .get(key)?
        .as_str()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PCT25: IntOrPercent = IntOrPercent::Percent(25);

    #[test]
    fn int_or_percent_parses_and_rounds() {
        let f = "maxSurge";
        assert_eq!(
            IntOrPercent::from_json(Some(&json!(1)), f, PCT25),
            Ok(IntOrPercent::Int(1))
        );
        assert_eq!(
            IntOrPercent::from_json(Some(&json!("30%")), f, PCT25),
            Ok(IntOrPercent::Percent(30))
        );
        assert_eq!(IntOrPercent::from_json(None, f, PCT25), Ok(PCT25));
        assert!(IntOrPercent::from_json(Some(&json!("3")), f, PCT25).is_err());
        assert!(IntOrPercent::from_json(Some(&json!(-1)), f, PCT25).is_err());
        assert_eq!(PCT25.scaled(10, true), 3);
        assert_eq!(PCT25.scaled(10, false), 2);
        assert_eq!(PCT25.scaled(4, true), 1);
        assert_eq!(PCT25.scaled(4, false), 1);
    }

    #[test]
    fn fenceposts_match_kubernetes() {
        assert_eq!(
            resolve_fenceposts(PCT25, PCT25, 10),
            Fenceposts {
                max_surge: 3,
                max_unavailable: 2
            }
        );
        assert_eq!(
            resolve_fenceposts(PCT25, PCT25, 3),
            Fenceposts {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        assert_eq!(
            resolve_fenceposts(IntOrPercent::Int(1), IntOrPercent::Int(0), 3),
            Fenceposts {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        assert_eq!(
            resolve_fenceposts(IntOrPercent::Int(0), IntOrPercent::Percent(10), 5),
            Fenceposts {
                max_surge: 0,
                max_unavailable: 1
            }
        );
        let f = resolve_fenceposts(IntOrPercent::Int(0), IntOrPercent::Int(5), 3);
        assert_eq!(effective_max_unavailable(f, 3), 3);
        assert_eq!(effective_max_unavailable(f, 0), 0);
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        // 25%/25% on 10: the first step creates 3 new pods.
        assert_eq!(new_replica_set_next_size(10, 3, 10, 0), 3);
        // 25%/25% on 3 and maxSurge 1 on 3: one new pod at a time.
        assert_eq!(new_replica_set_next_size(3, 1, 3, 0), 1);
        assert_eq!(new_replica_set_next_size(3, 1, 4, 1), 1);
        assert_eq!(new_replica_set_next_size(3, 1, 3, 1), 2);
        // Never beyond replicas.
        assert_eq!(new_replica_set_next_size(3, 5, 0, 0), 3);
        assert_eq!(new_replica_set_next_size(3, 1, 2, 3), 3);
    }

    fn counts(replicas: i32, available: i32) -> ReplicaCounts {
        ReplicaCounts {
            replicas,
            available,
        }
    }

    #[test]
    fn old_replica_sets_shrink_within_max_unavailable() {
        // 10 replicas, maxUnavailable 2: old 10 available, new 3 not yet available -> old 8.
        assert_eq!(
            old_replica_sets_next_sizes(&[counts(10, 10)], counts(3, 0), 10, 2),
            vec![8]
        );
        // maxSurge 1 / maxUnavailable 0 on 3: nothing goes until the new pod is available.
        assert_eq!(
            old_replica_sets_next_sizes(&[counts(3, 3)], counts(1, 0), 3, 0),
            vec![3]
        );
        assert_eq!(
            old_replica_sets_next_sizes(&[counts(3, 3)], counts(1, 1), 3, 0),
            vec![2]
        );
        // 25%/25% on 3 (surge 1, unavailable 0) behaves the same.
        assert_eq!(
            old_replica_sets_next_sizes(&[counts(2, 2)], counts(2, 2), 3, 0),
            vec![1]
        );
    }

    #[test]
    fn unhealthy_old_pods_are_cleaned_up_first() {
        // Old A: 2 of 4 unavailable, old B: 3 available; new 2 available; replicas 6, maxUnav 1.
        // Budget 4+3+2 - 5 - 0 = 4: A loses its 2 unhealthy pods (-> 2); then available
        // 2+3+2 = 7 > 5: 2 more go, oldest first: A 2 -> 0.
        assert_eq!(
            old_replica_sets_next_sizes(&[counts(4, 2), counts(3, 3)], counts(2, 2), 6, 1),
            vec![0, 3]
        );
        // Nothing may go: all pods 3 + 1, minimum 3, new unavailable 1 -> budget 0.
        assert_eq!(
            old_replica_sets_next_sizes(&[counts(3, 1)], counts(1, 0), 3, 0),
            vec![3]
        );
    }

    fn share(replicas: i32, max: i32) -> ProportionalShare {
        ProportionalShare {
            replicas,
            max_replicas: Some(max),
        }
    }

    #[test]
    fn proportional_scaling_keeps_the_ratio() {
        // The worked example: 10 -> 15 (maxSurge 25% = 4) with old 8, new 5.
        assert_eq!(
            replica_set_fraction(share(8, 13), 15, 19, 13),
            4,
            "round(8*19/13) - 8"
        );
        assert_eq!(
            proportional_sizes(&[share(8, 13), share(5, 13)], 15, 4, 13),
            vec![12, 7]
        );
        // Scaling down 10 -> 5 (maxSurge 2): old 8 and new 5 (sized for 13) -> allowed 7.
        // old: round(8*7/13) - 8 = -4, new: max(round(5*7/13) - 5, -6 + 4) = -2.
        assert_eq!(
            proportional_sizes(&[share(8, 13), share(5, 13)], 5, 2, 13),
            vec![4, 3]
        );
        // Scaling to 0 empties every ReplicaSet.
        assert_eq!(
            proportional_sizes(&[share(8, 13), share(5, 13)], 0, 3, 13),
            vec![0, 0]
        );
        // No annotation: the Deployment's status.replicas is the base.
        let bare = ProportionalShare {
            replicas: 2,
            max_replicas: None,
        };
        assert_eq!(replica_set_fraction(bare, 8, 10, 4), 3);
        assert_eq!(
            proportion(share(2, 4), 3, 4, 3),
            1,
            "capped by what is left"
        );
        assert_eq!(proportion(share(0, 4), 3, 4, 0), 0);
        // Leftovers from rounding go to the largest: 3 equal sets sized for 3, now 4 allowed.
        // Each fraction round(1*4/3) - 1 = 0, so the leftover 1 goes to the largest (newest).
        assert_eq!(
            proportional_sizes(&[share(1, 3), share(1, 3), share(1, 3)], 4, 0, 3),
            vec![1, 1, 2]
        );
    }

    #[test]
    fn hash_is_stable_safe_and_collision_aware() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}});
        let reordered = json!({"spec": {"containers": [{"image": "nginx:1.25", "name": "web"}]}, "metadata": {"labels": {"app": "web"}}});
        let h = pod_template_hash(&t, None);
        assert_eq!(h, pod_template_hash(&reordered, None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert!((6..=10).contains(&h.len()));
        assert_ne!(h, pod_template_hash(&t, Some(1)));
        assert_ne!(
            pod_template_hash(&t, Some(1)),
            pod_template_hash(&t, Some(2))
        );
        // SafeEncodeString of the decimal digits: '0' -> '4', '9' -> 'f'.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        assert_eq!(fnv1a_32(0x811c_9dc5, b"a"), 0xe40c_292c);
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let a =
            json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {}});
        let b = json!({"metadata": {"labels": {"app": "web"}}, "spec": {}});
        assert!(templates_equal_ignoring_hash(&a, &b));
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"x": 1}});
        assert!(!templates_equal_ignoring_hash(&a, &c));
    }

    #[test]
    fn reused_replica_set_keeps_its_revision_history() {
        let mut ann = Map::new();
        assert!(advance_revision(&mut ann, 1));
        assert_eq!(ann[REVISION_ANNOTATION], "1");
        assert!(ann.get(REVISION_HISTORY_ANNOTATION).is_none());
        assert!(!advance_revision(&mut ann, 1));
        assert!(advance_revision(&mut ann, 4));
        assert_eq!(ann[REVISION_ANNOTATION], "4");
        assert_eq!(ann[REVISION_HISTORY_ANNOTATION], "1");
        assert!(advance_revision(&mut ann, 6));
        assert_eq!(ann[REVISION_HISTORY_ANNOTATION], "1,4");
        assert!(set_replicas_annotations(&mut ann, 3, 4));
        assert!(!set_replicas_annotations(&mut ann, 3, 4));
        let rs = json!({"metadata": {"annotations": ann}});
        assert_eq!(revision_of(&rs), 6);
        assert_eq!(int_annotation(&rs, MAX_REPLICAS_ANNOTATION), Some(4));
    }
}
