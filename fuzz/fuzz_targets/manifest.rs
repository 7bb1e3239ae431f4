//! Bytes -> the path a committed file takes: limits, YAML, kinds, defaults, validation, the
//! set checks, allocation of ClusterIPs and NodePorts, the plan against an empty and against
//! an identical applied state, and `tend scale`'s edit of the file. Any panic is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use tend::api::Kind;
use tend::controller::alloc::Allocator;
use tend::manifest::edit::apply_edit;
use tend::manifest::{self, Limits};
use tend::plan::{self, Scope};
use tend::source::write::Edit;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let parsed = manifest::load_file("fuzz.yaml", data, &limits);
    for d in parsed.errors.iter().chain(&parsed.warnings) {
        let line = d.to_string();
        assert!(line.starts_with("fuzz.yaml"), "{line}");
    }
    let set_errors = manifest::validate_set(parsed.objects.iter());
    let Ok(mut allocator) = Allocator::new("10.96.0.0/12") else {
        return;
    };
    let mut desired = BTreeMap::new();
    for o in &parsed.objects {
        let mut body = plan::managed_body(&o.object, &o.file);
        if o.key.kind == Kind::Service && set_errors.is_empty() {
            let _ = allocator.assign(&o.key, &mut body);
        }
        desired.insert(o.key.clone(), body);
    }
    let _ = plan::plan(&desired, &BTreeMap::new(), &Scope::All);
    // Applying the same revision twice changes nothing.
    let again = plan::plan(&desired, &desired, &Scope::All);
    assert!(again.is_empty(), "{again:?}");
    // `tend scale` and `rollout pause` edit the file in place.
    if let Ok(text) = std::str::from_utf8(data) {
        for o in parsed
            .objects
            .iter()
            .filter(|o| o.key.kind == Kind::Deployment)
        {
            for edit in [Edit::SetReplicas(7), Edit::SetPaused(true)] {
                if let Ok(edited) = apply_edit(text, &o.key, &edit) {
                    let _ = manifest::load_file("fuzz.yaml", edited.as_bytes(), &limits);
                }
            }
        }
    }
});
