//! `kind: Endpoints` in the source, for Services without a selector: parsed, defaulted,
//! validated, and refused for a Service whose selector makes its endpoints.

use serde_json::json;
use tend::api::Kind;
use tend::manifest::{Limits, ParsedFile, load_file, validate_set};

fn load(name: &str, text: &str) -> ParsedFile {
    load_file(name, text.as_bytes(), &Limits::default())
}

const DB_ENDPOINTS: &str = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: db\nsubsets:\n- addresses:\n  - ip: 192.168.1.20\n  - ip: 192.168.1.21\n  ports:\n  - name: pg\n    port: 5432\n";

const DB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  ports:\n  - name: pg\n    port: 5432\n";

#[test]
fn endpoints_are_parsed_with_their_subsets_and_defaults() {
    let parsed = load("db-ep.yaml", DB_ENDPOINTS);
    assert!(parsed.errors.is_empty(), "{:#?}", parsed.errors);
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    assert_eq!(parsed.objects.len(), 1);
    let o = &parsed.objects[0];
    assert_eq!(o.key.kind, Kind::Endpoints);
    assert_eq!(o.key.name, "db");
    assert_eq!(
        o.object,
        json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "db", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "192.168.1.20"}, {"ip": "192.168.1.21"}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]})
    );
    let service = load("db.yaml", DB_SERVICE);
    let all: Vec<_> = parsed.objects.iter().chain(&service.objects).collect();
    assert_eq!(
        validate_set(all),
        vec![],
        "a selectorless Service may have them"
    );
}

#[test]
fn bad_addresses_and_ports_are_errors_naming_the_field() {
    let text = DB_ENDPOINTS
        .replace("192.168.1.21", "127.0.0.1")
        .replace("5432", "70000");
    let parsed = load("db-ep.yaml", &text);
    let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
    assert!(parsed.objects.is_empty());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("db-ep.yaml:8:") && e.contains("loopback")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("subsets[0].ports[0].port") && e.contains("70000")),
        "{errors:#?}"
    );
    let parsed = load("x.yaml", &DB_ENDPOINTS.replace("192.168.1.20", "db.local"));
    assert!(
        parsed.errors[0]
            .to_string()
            .contains("not an IPv4 or IPv6 address"),
        "{:?}",
        parsed.errors
    );
    let parsed = load(
        "x.yaml",
        &DB_ENDPOINTS.replace("apiVersion: v1", "apiVersion: v2"),
    );
    assert!(
        parsed.errors[0]
            .to_string()
            .contains("Endpoints needs apiVersion v1"),
        "{:?}",
        parsed.errors
    );
}

#[test]
fn endpoints_for_a_service_with_a_selector_are_refused() {
    let endpoints = load("db-ep.yaml", DB_ENDPOINTS);
    let service = load(
        "db.yaml",
        &DB_SERVICE.replace("spec:\n", "spec:\n  selector:\n    app: db\n"),
    );
    let all: Vec<_> = endpoints.objects.iter().chain(&service.objects).collect();
    let errors: Vec<String> = validate_set(all).iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("db-ep.yaml:1"), "{}", errors[0]);
    assert!(
        errors[0].contains("Service db at db.yaml:1 has a selector"),
        "{}",
        errors[0]
    );
}
