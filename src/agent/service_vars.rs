//! The Service variables of a namespace, computed once per change of the Services and shared
//! by every container started from them ([`ServiceEnvCache`]).
//!
//! Why: 50 pods starting at once in a namespace of 2,000 Services each copied the 2,000
//! Services and built the same 14,000 variables (~25 MB at once with heaptrack's count, of
//! 188 MB peak), memory glibc kept afterwards. Now one packed copy (~0.7 MB) is built per
//! namespace and version of the Services.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use super::runtime::env::ServiceEnv;
use super::services::{ServiceSource, service_env};

/// The variables last computed, by namespace and `enableServiceLinks`, with the version of
/// the Services they were computed from.
#[derive(Default)]
pub struct ServiceEnvCache {
    computed: Mutex<HashMap<(String, bool), (u64, ServiceEnv)>>,
}

impl ServiceEnvCache {
    /// The Service variables for a container of `pod` (its namespace and
    /// `spec.enableServiceLinks`, default true) from what `source` knows now; `None` while
    /// the Services were never read. Computed while holding the cache, so that containers
    /// starting together wait for one computation instead of making one each.
    pub fn for_pod(&self, source: &dyn ServiceSource, pod: &Value) -> Option<ServiceEnv> {
        let namespace = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let links = pod
            .pointer("/spec/enableServiceLinks")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let compute = || -> Option<ServiceEnv> {
            Some(service_env(&source.services_for(namespace)?, namespace, links).into())
        };
        // Read before the Services: a change after this makes the entry stale, never wrong.
        let Some(version) = source.version() else {
            return compute();
        };
        let mut computed = self
            .computed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (namespace.to_string(), links);
        if let Some((v, env)) = computed.get(&key)
            && *v == version
        {
            return Some(env.clone());
        }
        let env = compute()?;
        computed.retain(|_, (v, _)| *v == version);
        computed.insert(key, (version, env.clone()));
        Some(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Services of `default` named `svc-0..n`, counting reads; `version` as set.
    #[derive(Default)]
    struct Counting {
        services: Mutex<Vec<Service>>,
        reads: AtomicUsize,
        version: AtomicU64,
        unversioned: bool,
    }

    impl Counting {
        fn set(&self, n: usize) {
            *self.services.lock().expect("lock") = (0..n)
                .map(|i| {
                    serde_json::from_value(json!({
                        "metadata": {"namespace": "default", "name": format!("svc-{i}")},
                        "spec": {"clusterIP": format!("10.96.0.{i}"), "ports": [{"port": 80}]},
                    }))
                    .expect("service")
                })
                .collect();
            self.version.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl ServiceSource for Counting {
        fn services_for(&self, _namespace: &str) -> Option<Vec<Service>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Some(self.services.lock().expect("lock").clone())
        }
        fn version(&self) -> Option<u64> {
            (!self.unversioned).then(|| self.version.load(Ordering::SeqCst))
        }
    }

    fn pod(ns: &str, links: Option<bool>) -> Value {
        let mut pod = json!({"metadata": {"namespace": ns, "name": "p"}, "spec": {}});
        if let Some(links) = links {
            pod["spec"]["enableServiceLinks"] = json!(links);
        }
        pod
    }

    #[test]
    fn computed_once_per_version_namespace_and_links() {
        let source = Counting::default();
        source.set(3);
        let cache = ServiceEnvCache::default();
        let first = cache.for_pod(&source, &pod("default", None)).expect("env");
        let again = cache
            .for_pod(&source, &pod("default", Some(true)))
            .expect("env");
        assert_eq!(source.reads.load(Ordering::SeqCst), 1, "read once");
        assert_eq!(first, again);
        assert_eq!(first.get("SVC_2_SERVICE_HOST"), Some("10.96.0.2"));
        // The same variables as computing them directly.
        let direct: ServiceEnv =
            service_env(&source.services_for("default").expect("s"), "default", true).into();
        assert_eq!(first, direct);

        cache
            .for_pod(&source, &pod("default", Some(false)))
            .expect("env");
        cache.for_pod(&source, &pod("shop", None)).expect("env");
        assert_eq!(source.reads.load(Ordering::SeqCst), 4, "one per key");

        source.set(5);
        let changed = cache.for_pod(&source, &pod("default", None)).expect("env");
        assert_eq!(changed.get("SVC_4_SERVICE_HOST"), Some("10.96.0.4"));
        assert_eq!(source.reads.load(Ordering::SeqCst), 5);
        assert_eq!(
            cache.computed.lock().expect("lock").len(),
            1,
            "stale dropped"
        );
    }

    #[test]
    fn an_unversioned_source_is_read_every_time() {
        let source = Counting {
            unversioned: true,
            ..Counting::default()
        };
        source.set(2);
        let cache = ServiceEnvCache::default();
        for _ in 0..3 {
            let env = cache.for_pod(&source, &pod("default", None)).expect("env");
            assert_eq!(env.get("SVC_1_SERVICE_PORT"), Some("80"));
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), 3);
    }
}
