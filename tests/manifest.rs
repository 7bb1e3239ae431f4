//! The manifest stage against the seed tutorials, hand-written fixtures and hostile input.

use serde_json::Value;
use std::time::{Duration, Instant};
use tend::api::Kind;
use tend::manifest::{DesiredObject, Limits, ParsedFile, load_file, validate_set};

fn load_fixture(path: &str) -> ParsedFile {
    let bytes = std::fs::read(format!("tests/fixtures/{path}")).unwrap();
    load_file(path, &bytes, &Limits::default())
}

fn load(text: &str) -> ParsedFile {
    load_file("test.yaml", text.as_bytes(), &Limits::default())
}

/// Loads a file that must yield exactly one object and no errors.
fn one_object(parsed: &ParsedFile) -> &Value {
    assert!(parsed.errors.is_empty(), "errors: {:#?}", parsed.errors);
    assert_eq!(parsed.objects.len(), 1, "{parsed:#?}");
    &parsed.objects[0].object
}

fn errors(parsed: &ParsedFile) -> Vec<String> {
    parsed.errors.iter().map(ToString::to_string).collect()
}

fn warnings(parsed: &ParsedFile) -> Vec<String> {
    parsed.warnings.iter().map(ToString::to_string).collect()
}

#[track_caller]
fn assert_error(parsed: &ParsedFile, expected: &str) {
    let errors = errors(parsed);
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "no error containing {expected:?} in {errors:#?}"
    );
    assert!(parsed.objects.is_empty(), "{:#?}", parsed.objects);
}

// ---------------------------------------------------------------- seeds

#[test]
fn seed_000_legacy_deployment_is_converted_with_selector_from_labels() {
    let parsed = load_fixture("seeds/000-00-xgp-web.yaml");
    let d = one_object(&parsed);
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["metadata"]["name"], "xgp-web");
    assert_eq!(d["metadata"]["namespace"], "default");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["selector"],
        serde_json::json!({"matchLabels": {"app": "xgp-server"}})
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "192.168.1.21:5000/web:v1");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        warnings(&parsed),
        [
            "seeds/000-00-xgp-web.yaml:2:1: apiVersion: converted extensions/v1beta1 Deployment to apps/v1"
        ]
    );
    assert_eq!(parsed.objects[0].line, 1);
    assert_eq!(
        parsed.objects[0].key,
        tend::api::ObjectKey::new(Kind::Deployment, "default", "xgp-web")
    );
}

#[test]
fn seed_000_replicas_four() {
    let parsed = load_fixture("seeds/000-01-xgp-web-replicas-4.yaml");
    assert_eq!(one_object(&parsed)["spec"]["replicas"], 4);
}

#[test]
fn seed_000_service_gets_defaults() {
    let parsed = load_fixture("seeds/000-02-xgp-svc.yaml");
    let s = one_object(&parsed);
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["spec"]["type"], "ClusterIP");
    assert_eq!(s["spec"]["sessionAffinity"], "None");
    assert_eq!(
        s["spec"]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 80, "targetPort": 80}])
    );
    assert!(parsed.warnings.is_empty());
}

#[test]
fn seed_000_container_port_with_comment() {
    let parsed = load_fixture("seeds/000-03-xgp-web-container-port.yaml");
    let d = one_object(&parsed);
    let port = &d["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert_eq!(port["containerPort"], 80);
    assert_eq!(port["protocol"], "TCP");
}

#[test]
fn seed_000_node_port_services() {
    for file in [
        "seeds/000-04-xgp-svc-nodeport.yaml",
        "seeds/000-08-xgp-svc-nodeport-again.yaml",
    ] {
        let parsed = load_fixture(file);
        let s = one_object(&parsed);
        assert_eq!(s["spec"]["type"], "NodePort");
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30123);
    }
}

#[test]
fn seed_000_node_selector_variants() {
    for file in [
        "seeds/000-06-xgp-1-node-selector.yaml",
        "seeds/000-07-xgp-web-node-selector.yaml",
        "seeds/000-09-xgp-web-v2.yaml",
        "seeds/000-10-xgp-web-v3.yaml",
    ] {
        let parsed = load_fixture(file);
        let d = one_object(&parsed);
        assert_eq!(
            d["spec"]["template"]["spec"]["nodeSelector"],
            serde_json::json!({"disk": "ssd"}),
            "{file}"
        );
    }
    let v3 = load_fixture("seeds/000-10-xgp-web-v3.yaml");
    assert_eq!(
        one_object(&v3)["spec"]["template"]["spec"]["containers"][0]["image"],
        "192.168.1.21:5000/web:v3"
    );
}

#[test]
fn seed_000_prose_after_image_is_an_actionable_error() {
    let parsed = load_fixture("seeds/000-05-xgp1-history.yaml");
    assert_error(
        &parsed,
        "seeds/000-05-xgp1-history.yaml:15:9: spec.template.spec.containers[0].image: invalid image",
    );
    assert_error(&parsed, "is a comment missing its `#`?");
}

#[test]
fn seed_001_serve_deployment() {
    let parsed = load_fixture("seeds/001-00-serve-deployment.yaml");
    let d = one_object(&parsed);
    assert_eq!(d["metadata"]["name"], "serve-deployment");
    assert_eq!(d["metadata"]["labels"]["app"], "auto-serve");
    assert_eq!(d["spec"]["replicas"], 2);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    // Given explicitly: kept even though the tag is `latest`.
    assert_eq!(c["imagePullPolicy"], "Never");
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        "25%"
    );
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert!(d.get("status").is_none());
}

#[test]
fn seed_002_flattened_with_comments_says_so() {
    let parsed = load_fixture("seeds/002-00-deployment-user-v1.yaml");
    assert_error(
        &parsed,
        "seeds/002-00-deployment-user-v1.yaml:1:1: the document has no `kind`",
    );
    assert_error(&parsed, "flattened onto one line");
}

#[test]
fn seed_002_flattened_without_comments_is_a_syntax_error_with_position() {
    for file in [
        "seeds/002-01-user-service-v1.yaml",
        "seeds/002-02-ingress-nginx-deploy-excerpt.yaml",
        "seeds/002-03-nginx-ingress.yaml",
    ] {
        let parsed = load_fixture(file);
        assert_error(&parsed, &format!("{file}:1:"));
        assert_error(&parsed, "mapping values are not allowed in this context");
        assert_error(&parsed, "flattened onto one line");
    }
    let parsed = load_fixture("seeds/002-01-user-service-v1.yaml");
    assert_eq!(
        errors(&parsed)[0].split(": ").next(),
        Some("seeds/002-01-user-service-v1.yaml:1:20")
    );
}

#[test]
fn seed_003_unindented_deployment_points_at_the_indentation() {
    let parsed = load_fixture("seeds/003-07-nginx-deployment.yaml");
    assert_error(
        &parsed,
        "seeds/003-07-nginx-deployment.yaml:9:1: YAML syntax error",
    );
    assert_error(&parsed, "`metadata:` at line 3 has no fields");
    assert_error(&parsed, "looks unindented");
    assert_error(&parsed, "line 8 `replicas:3` has no space after ':'");
}

#[test]
fn seed_003_every_snippet_is_an_error_or_a_skipped_pod() {
    let mut names: Vec<_> = std::fs::read_dir("tests/fixtures/seeds")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("003-"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 12);
    for name in names {
        let parsed = load_fixture(&format!("seeds/{name}"));
        assert!(parsed.objects.is_empty(), "{name}");
        if parsed.errors.is_empty() {
            assert!(
                warnings(&parsed)
                    .iter()
                    .any(|w| w.contains("kind Pod is not managed by tend")),
                "{name}: {parsed:#?}"
            );
        }
        for e in &parsed.errors {
            assert!(e.line > 0 && e.column > 0, "{name}: {e}");
        }
    }
}

#[test]
fn seed_003_backtick_line() {
    let parsed = load_fixture("seeds/003-00-nginx-pod.yaml");
    assert_error(
        &parsed,
        "seeds/003-00-nginx-pod.yaml:10:1: YAML syntax error",
    );
    assert_error(&parsed, "a line cannot start with '`'");
}

#[test]
fn seed_004_deployment_demo_strategy() {
    for (file, image) in [
        ("seeds/004-00-nginx-deployment-demo.yaml", "nginx:1.7.9"),
        ("seeds/004-01-nginx-deployment-demo-v2.yaml", "nginx:1.8"),
    ] {
        let parsed = load_fixture(file);
        let d = one_object(&parsed);
        assert_eq!(d["metadata"]["name"], "nginx-deployment-demo");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 3);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], image);
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    }
}

#[test]
fn seed_004_services() {
    let s = load_fixture("seeds/004-02-nginx-service.yaml");
    let s = one_object(&s);
    assert_eq!(s["spec"]["ports"][0]["port"], 8080);
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    let no_selector = load_fixture("seeds/004-03-my-service-no-selector.yaml");
    assert!(one_object(&no_selector)["spec"].get("selector").is_none());
    let multi = load_fixture("seeds/004-04-my-service-multi-port.yaml");
    let multi = one_object(&multi);
    assert_eq!(multi["spec"]["ports"][1]["name"], "https");
    assert_eq!(multi["spec"]["ports"][1]["targetPort"], 9377);
}

#[test]
fn seeds_as_one_repository_report_the_shared_node_port() {
    let mut objects: Vec<DesiredObject> = Vec::new();
    for file in [
        "seeds/000-04-xgp-svc-nodeport.yaml",
        "seeds/000-08-xgp-svc-nodeport-again.yaml",
    ] {
        objects.extend(load_fixture(file).objects);
    }
    let errors: Vec<String> = validate_set(&objects)
        .iter()
        .map(ToString::to_string)
        .collect();
    // The same Service twice: a duplicate, naming both files.
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("is defined twice"));
    assert!(errors[0].contains("seeds/000-04-xgp-svc-nodeport.yaml:1"));
    assert!(errors[0].contains("seeds/000-08-xgp-svc-nodeport-again.yaml:1"));
}

// ---------------------------------------------------------------- hostile input

#[track_caller]
fn assert_fails_fast(bytes: &[u8], expected: &str) -> ParsedFile {
    let started = Instant::now();
    let parsed = load_file("evil.yaml", bytes, &Limits::default());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(parsed.objects.is_empty());
    assert_eq!(parsed.errors.len(), 1, "{:#?}", parsed.errors);
    let e = parsed.errors[0].to_string();
    assert!(e.starts_with("evil.yaml"), "{e}");
    assert!(e.contains(expected), "{e:?} lacks {expected:?}");
    parsed
}

#[test]
fn billion_laughs_is_refused() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(",");
        text.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    assert_fails_fast(text.as_bytes(), "alias expansions");
}

#[test]
fn deep_nesting_is_refused() {
    let text = "[".repeat(20_000);
    let parsed = assert_fails_fast(
        text.as_bytes(),
        "nesting is deeper than the limit of 64 levels",
    );
    assert_eq!(parsed.errors[0].line, 1);
    let text = "a:\n".to_string()
        + &(1..100)
            .map(|i| format!("{}b{i}:\n", " ".repeat(i)))
            .collect::<String>();
    assert_fails_fast(text.as_bytes(), "nesting is deeper");
}

#[test]
fn big_file_is_refused_before_parsing() {
    let text = "# padding\n".repeat(500_000);
    assert_fails_fast(text.as_bytes(), "larger than the limit of 4194304 bytes");
}

#[test]
fn binary_and_utf16_are_refused() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    assert_fails_fast(&bytes, "not UTF-8 text");
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("kind: Service".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    assert_fails_fast(&utf16, "UTF-16; save it as UTF-8");
    let utf16_be: Vec<u8> = [0xFE, 0xFF]
        .into_iter()
        .chain("kind: Service".encode_utf16().flat_map(u16::to_be_bytes))
        .collect();
    assert_fails_fast(&utf16_be, "UTF-16; save it as UTF-8");
}

#[test]
fn random_text_never_panics() {
    let alphabet: Vec<char> = "ab:- \n\t[]{}&*!|>'\"#%@`,?.0123456789ü\u{feff}"
        .chars()
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let len = (seed % 200) as usize;
        let text: String = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let parsed = load_file("fuzz.yaml", text.as_bytes(), &Limits::default());
        for e in &parsed.errors {
            assert_eq!(e.file, "fuzz.yaml");
        }
    }
}

#[test]
fn too_many_documents_are_refused() {
    let text = "---\na: 1\n".repeat(1001);
    assert_fails_fast(text.as_bytes(), "more than 1000 documents");
}

#[test]
fn duplicate_keys_are_errors_with_both_lines() {
    let parsed = load(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n  type: NodePort\n  type: ClusterIP\n",
    );
    assert_eq!(
        errors(&parsed),
        ["test.yaml:9:3: spec.type: duplicate key `type` (first given at line 8)"]
    );
}

#[test]
fn limits_are_configurable() {
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    let parsed = load_file("x.yaml", b"a:\n  b:\n    c:\n      d: 1\n", &limits);
    let errors = errors(&parsed);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("x.yaml:4:"), "{errors:?}");
    assert!(errors[0].ends_with("a.b.c: nesting is deeper than the limit of 3 levels"));
}

// ---------------------------------------------------------------- documents and kinds

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
        tier: front
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
          name: http
";

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: http
";

#[test]
fn multi_document_files_skip_empty_and_comment_documents() {
    let text =
        format!("# header\n---\n{DEPLOYMENT}---\n# only a comment\n---\n---\n{SERVICE}...\n");
    let parsed = load(&text);
    assert!(parsed.errors.is_empty(), "{:#?}", parsed.errors);
    assert_eq!(parsed.objects.len(), 2);
    assert_eq!(parsed.objects[0].line, 3);
    assert_eq!(parsed.objects[1].key.kind, Kind::Service);
    assert_eq!(parsed.objects[1].line, 3 + DEPLOYMENT.lines().count() + 4);
    let c = &parsed.objects[0].object["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "Always");
}

#[test]
fn a_document_must_be_a_mapping_with_api_version_and_kind() {
    assert_error(
        &load("- a\n- b\n"),
        "test.yaml:1:1: a document must be a mapping",
    );
    assert_error(
        &load("kind: Service\nmetadata:\n  name: a\n"),
        "test.yaml:1:1: the document has no `apiVersion`",
    );
    assert_error(
        &load("apiVersion: v1\nmetadata:\n  name: a\n"),
        "the document has no `kind`",
    );
    assert_error(
        &load("apiversion: v1\nkind: Service\n"),
        "found `apiversion`: field names are case-sensitive",
    );
    assert_error(
        &load("apiVersion: v1\nkind: service\n"),
        "test.yaml:2:1: kind: unknown kind service: did you mean Service?",
    );
}

#[test]
fn other_kinds_are_skipped_with_a_warning() {
    let parsed = load(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n---\napiVersion: v1\nkind: Pod\n",
    );
    assert!(parsed.errors.is_empty());
    assert!(parsed.objects.is_empty());
    assert_eq!(
        warnings(&parsed),
        [
            "test.yaml:2:1: kind: kind ConfigMap is not managed by tend (only Deployment, Service and Endpoints); skipped",
            "test.yaml:7:1: kind: kind Pod is not managed by tend (only Deployment, Service and Endpoints); skipped",
        ]
    );
}

#[test]
fn known_kind_with_wrong_api_version_is_an_error() {
    let text = DEPLOYMENT.replace("apps/v1", "v1");
    assert_error(
        &load(&text),
        "test.yaml:1:1: apiVersion: Deployment needs apiVersion apps/v1",
    );
    let text = SERVICE.replace("apiVersion: v1", "apiVersion: apps/v1");
    assert_error(&load(&text), "Service needs apiVersion v1, not apps/v1");
}

#[test]
fn every_legacy_version_converts() {
    for version in ["extensions/v1beta1", "apps/v1beta1", "apps/v1beta2"] {
        let text = DEPLOYMENT.replace("apps/v1", version);
        let parsed = load(&text);
        assert_eq!(one_object(&parsed)["apiVersion"], "apps/v1");
        assert_eq!(
            warnings(&parsed),
            [format!(
                "test.yaml:1:1: apiVersion: converted {version} Deployment to apps/v1"
            )]
        );
    }
}

#[test]
fn unindented_document_is_explained() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\nname: web\nspec:\nreplicas: 1\n";
    assert_error(
        &load(text),
        "test.yaml:4:1: name: `metadata` (line 3) has no fields and `name` at line 4 is a top-level field: the mapping looks unindented",
    );
}

// ---------------------------------------------------------------- typed check

#[test]
fn type_errors_name_the_field_and_position() {
    let text = DEPLOYMENT.replace("replicas: 2", "replicas: three");
    assert_eq!(
        errors(&load(&text)),
        ["test.yaml:9:3: spec.replicas: invalid type: string \"three\", expected i32"]
    );
    let text = DEPLOYMENT.replace("containerPort: 80", "containerPort: [80]");
    assert_error(
        &load(&text),
        "test.yaml:23:11: spec.template.spec.containers[0].ports[0].containerPort: invalid type: sequence",
    );
}

#[test]
fn integer_overflow_is_a_clear_error() {
    let text = DEPLOYMENT.replace("replicas: 2", "replicas: 99999999999");
    assert_error(
        &load(&text),
        "spec.replicas: 99999999999 is out of range: it must be an integer from -2147483648 to 2147483647",
    );
    let text = DEPLOYMENT.replace("replicas: 2", "replicas: 99999999999999999999999");
    assert_error(&load(&text), "spec.replicas: ");
}

#[test]
fn unknown_fields_are_warnings_with_path_and_position() {
    let text = DEPLOYMENT.replace(
        "image: nginx",
        "image: nginx\n        imagePullpolicy: Always",
    );
    let parsed = load(&text);
    one_object(&parsed);
    assert_eq!(
        warnings(&parsed),
        ["test.yaml:22:9: spec.template.spec.containers[0].imagePullpolicy: unknown field"]
    );
    let object = &parsed.objects[0].object;
    assert!(
        object["spec"]["template"]["spec"]["containers"][0]
            .get("imagePullpolicy")
            .is_none()
    );
}

#[test]
fn status_and_server_fields_are_dropped() {
    let text = format!("{DEPLOYMENT}status:\n  replicas: 5\n").replace(
        "  namespace: shop\n",
        "  namespace: shop\n  uid: abc\n  resourceVersion: \"7\"\n  annotations:\n    note: hi\n",
    );
    let parsed = load(&text);
    let d = one_object(&parsed);
    assert!(d.get("status").is_none());
    let meta: Vec<&String> = d["metadata"].as_object().unwrap().keys().collect();
    assert_eq!(meta, ["annotations", "labels", "name", "namespace"]);
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
}

// ---------------------------------------------------------------- validation

#[track_caller]
fn deployment_error(from: &str, to: &str, expected: &str) {
    assert!(DEPLOYMENT.contains(from), "{from}");
    assert_error(&load(&DEPLOYMENT.replacen(from, to, 1)), expected);
}

#[track_caller]
fn service_error(from: &str, to: &str, expected: &str) {
    assert!(SERVICE.contains(from), "{from}");
    assert_error(&load(&SERVICE.replacen(from, to, 1)), expected);
}

#[test]
fn names_must_be_dns() {
    deployment_error(
        "name: web\n",
        "name: Web_App\n",
        "test.yaml:4:3: metadata.name: invalid name \"Web_App\"",
    );
    deployment_error(
        "name: web\n",
        &format!("name: {}\n", "a".repeat(254)),
        "at most 253 characters",
    );
    service_error(
        "name: web\n",
        &format!("name: {}\n", "a".repeat(64)),
        "at most 63 characters",
    );
    service_error(
        "name: web\n",
        "name: 1web\n",
        "must start with a lowercase letter",
    );
    deployment_error(
        "namespace: shop",
        "namespace: shop.eu",
        "metadata.namespace: invalid namespace \"shop.eu\"",
    );
    deployment_error(
        "  name: web\n  namespace",
        "  namespace",
        "metadata.name is required",
    );
    deployment_error("name: web\n", "name: \"we\\nb\"\n", "invalid name");
}

#[test]
fn labels_follow_kubernetes_rules() {
    deployment_error(
        "    app: web\nspec",
        "    app: web\n    bad key: x\nspec",
        "metadata.labels.bad key: invalid label key",
    );
    deployment_error(
        "    app: web\nspec",
        &format!("    app: {}\nspec", "v".repeat(64)),
        "invalid label value",
    );
    deployment_error(
        "    app: web\nspec",
        "    example.com/app: -web\nspec",
        "invalid label value \"-web\"",
    );
    deployment_error(
        "        tier: front",
        "        UPPER.example.com/x: y",
        "invalid label key",
    );
}

#[test]
fn selector_rules() {
    deployment_error(
        "      app: web\n  template",
        "      app: api\n  template",
        "test.yaml:10:3: spec.selector: spec.selector does not match template labels",
    );
    deployment_error(
        "  selector:\n    matchLabels:\n      app: web\n",
        "",
        "a Deployment needs spec.selector",
    );
    deployment_error(
        "    matchLabels:\n      app: web\n",
        "    matchLabels: {}\n",
        "test.yaml:10:3: spec.selector: a Deployment needs spec.selector, not empty",
    );
    deployment_error(
        "    matchLabels:\n      app: web\n",
        "    matchExpressions:\n    - {key: tier, operator: In, values: [back]}\n",
        "does not match template labels",
    );
    let ok = DEPLOYMENT.replacen(
        "    matchLabels:\n      app: web\n",
        "    matchExpressions:\n    - {key: tier, operator: In, values: [front]}\n",
        1,
    );
    one_object(&load(&ok));
}

#[test]
fn replicas_containers_and_images() {
    deployment_error(
        "replicas: 2",
        "replicas: -1",
        "test.yaml:9:3: spec.replicas: replicas must be at least 0, not -1",
    );
    deployment_error(
        "      containers:\n      - name: web\n        image: nginx\n        ports:\n        - containerPort: 80\n          name: http\n",
        "      containers: []\n",
        "spec.template.spec.containers: a pod needs at least one container",
    );
    deployment_error(
        "image: nginx",
        "image: \"\"",
        "every container needs an image",
    );
    deployment_error("image: nginx", "image: \"nginx\\t1\"", "invalid image");
    deployment_error(
        "- name: web\n",
        "- name: Web\n",
        "invalid container name \"Web\"",
    );
    deployment_error(
        "      - name: web\n        image: nginx",
        "      - image: nginx",
        "every container needs a name",
    );
    deployment_error(
        "          name: http\n",
        "          name: http\n      - name: web\n        image: busybox\n",
        "container name \"web\" is used twice",
    );
    deployment_error(
        "          name: http\n",
        "          name: http\n        env:\n        - name: \"A\\u0007B\"\n",
        "invalid environment variable name",
    );
    // Names are unique across init and app containers; init containers have no hooks.
    deployment_error(
        "      containers:\n",
        "      initContainers:\n      - name: web\n        image: busybox\n      containers:\n",
        "container name \"web\" is used twice",
    );
    deployment_error(
        "      containers:\n",
        "      initContainers:\n      - name: setup\n        image: busybox\n        lifecycle:\n          postStart:\n            exec:\n              command: [\"true\"]\n      containers:\n",
        "spec.template.spec.initContainers[0].lifecycle: may not be set for init containers",
    );
}

#[test]
fn container_ports() {
    deployment_error(
        "containerPort: 80",
        "containerPort: 0",
        "containerPort: port 0 is out of range 1-65535",
    );
    deployment_error(
        "containerPort: 80",
        "containerPort: 70000",
        "port 70000 is out of range",
    );
    deployment_error("name: http", "name: HTTP", "invalid port name");
}

#[test]
fn strategy_rules() {
    let strategy =
        "  strategy:\n    rollingUpdate:\n      maxSurge: 0\n      maxUnavailable: 0%\n  template";
    deployment_error(
        "  template",
        strategy,
        "maxSurge and maxUnavailable must not both be 0",
    );
    let strategy = "  strategy:\n    rollingUpdate:\n      maxSurge: -1\n  template";
    deployment_error(
        "  template",
        strategy,
        "must be an integer ≥ 0 or a percentage",
    );
    let strategy = "  strategy:\n    rollingUpdate:\n      maxSurge: lots\n  template";
    deployment_error("  template", strategy, "not \"lots\"");
    let strategy = "  strategy:\n    type: Sometimes\n  template";
    deployment_error(
        "  template",
        strategy,
        "strategy type must be RollingUpdate or Recreate",
    );
    let recreate = DEPLOYMENT.replacen(
        "  template",
        "  strategy:\n    type: Recreate\n  template",
        1,
    );
    let parsed = load(&recreate);
    assert_eq!(
        one_object(&parsed)["spec"]["strategy"],
        serde_json::json!({"type": "Recreate"})
    );
}

#[test]
fn service_rules() {
    service_error(
        "port: 80",
        "port: 0",
        "test.yaml:10:5: spec.ports[0].port: port 0 is out of range 1-65535",
    );
    service_error("port: 80", "port: 65536", "out of range");
    service_error(
        "  - port: 80\n    targetPort: http\n",
        "  - port: 80\n    name: a\n  - port: 80\n    name: b\n",
        "port 80/TCP is given twice",
    );
    service_error(
        "  - port: 80\n    targetPort: http\n",
        "  - port: 80\n  - port: 81\n",
        "every port needs a name when a Service has more than one port",
    );
    service_error(
        "  - port: 80\n    targetPort: http\n",
        "  - port: 80\n    name: a\n  - port: 81\n    name: a\n",
        "port name \"a\" is used twice",
    );
    service_error(
        "targetPort: http",
        "targetPort: 0",
        "targetPort: port 0 is out of range",
    );
    service_error(
        "targetPort: http",
        "targetPort: not_a_name",
        "is neither a number nor a port name",
    );
    service_error(
        "targetPort: http",
        "nodePort: 30080",
        "nodePort may only be given for type NodePort or LoadBalancer",
    );
    let node_port = SERVICE.replacen("spec:\n", "spec:\n  type: NodePort\n", 1);
    assert_error(
        &load(&node_port.replacen("targetPort: http", "nodePort: 29999", 1)),
        "nodePort 29999 is outside the range 30000-32767",
    );
    one_object(&load(&node_port.replacen(
        "targetPort: http",
        "nodePort: 32767",
        1,
    )));
    service_error(
        "spec:\n",
        "spec:\n  type: Magic\n",
        "type must be ClusterIP, NodePort, LoadBalancer or ExternalName",
    );
    service_error(
        "spec:\n",
        "spec:\n  clusterIP: 10.0.0.300\n",
        "clusterIP must be None or an IPv4 address",
    );
    one_object(&load(&SERVICE.replacen(
        "spec:\n",
        "spec:\n  clusterIP: None\n",
        1,
    )));
    one_object(&load(&SERVICE.replacen(
        "spec:\n",
        "spec:\n  clusterIP: 10.96.0.10\n",
        1,
    )));
}

#[test]
fn service_port_protocols_make_ports_distinct() {
    let text = SERVICE.replacen(
        "  - port: 80\n    targetPort: http\n",
        "  - port: 53\n    name: dns\n  - port: 53\n    name: dns-udp\n    protocol: UDP\n",
        1,
    );
    let parsed = load(&text);
    assert_eq!(one_object(&parsed)["spec"]["ports"][1]["targetPort"], 53);
}

// ---------------------------------------------------------------- the whole set

#[test]
fn validate_set_reports_duplicates_and_shared_node_ports() {
    let a = load_file("a.yaml", DEPLOYMENT.as_bytes(), &Limits::default());
    let b = load_file(
        "dir/b.yaml",
        format!("# x\n---\n{DEPLOYMENT}").as_bytes(),
        &Limits::default(),
    );
    let node_port = |name: &str| {
        SERVICE
            .replacen("name: web", &format!("name: {name}"), 1)
            .replacen("spec:\n", "spec:\n  type: NodePort\n", 1)
            .replacen("targetPort: http", "nodePort: 30123", 1)
    };
    let c = load_file("c.yaml", node_port("one").as_bytes(), &Limits::default());
    let d = load_file(
        "d.yaml",
        format!("\n{}", node_port("two")).as_bytes(),
        &Limits::default(),
    );
    let all: Vec<&DesiredObject> = [&a, &b, &c, &d].iter().flat_map(|p| &p.objects).collect();
    assert_eq!(all.len(), 4);
    let errors: Vec<String> = validate_set(all).iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "dir/b.yaml:3: Deployment shop/web is defined twice: at a.yaml:1 and at dir/b.yaml:3",
            "d.yaml:2: spec.ports: nodePort 30123/TCP is given by service/one at c.yaml:1 and by service/two at d.yaml:2",
        ]
    );
}

// ---------------------------------------------------------------- scale

#[test]
fn four_thousand_objects_load() {
    let mut files = Vec::new();
    for i in 0..2000 {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  labels:\n    app: app-{i}\n    team: t{t}\n  annotations:\n    owner: team-{t}\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: app-{i}\n  template:\n    metadata:\n      labels:\n        app: app-{i}\n    spec:\n      containers:\n      - name: main\n        image: registry.local:5000/app-{i}:v1\n        ports:\n        - containerPort: 8080\n          name: http\n        env:\n        - name: MODE\n          value: prod\n        resources:\n          requests:\n            cpu: 100m\n            memory: 64Mi\n        readinessProbe:\n          httpGet:\n            path: /healthz\n            port: http\n          periodSeconds: 5\n      nodeSelector:\n        disk: ssd\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app-{i}\nspec:\n  selector:\n    app: app-{i}\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n",
            t = i % 7
        );
        files.push((format!("apps/app-{i}.yaml"), text));
    }
    let started = Instant::now();
    let mut objects = Vec::new();
    for (name, text) in &files {
        let parsed = load_file(name, text.as_bytes(), &Limits::default());
        assert!(parsed.errors.is_empty(), "{:#?}", parsed.errors);
        assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
        objects.extend(parsed.objects);
    }
    assert!(validate_set(&objects).is_empty());
    assert_eq!(objects.len(), 4000);
    eprintln!("loaded 4000 objects in {:?}", started.elapsed());
}
