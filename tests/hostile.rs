//! Hostile input (issue 8, part 1): every case is a real commit to a real git repository
//! watched by a real `tend serve`, or a real HTTP request to it. Each hostile commit must be
//! Rejected with one-line errors naming the file (and line, where the parser knows it); serve
//! must stay up; the last good state must keep serving, untouched (same uid, generation,
//! annotations and spec).

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The last good state: a Deployment and a NodePort Service with a fixed ClusterIP.
const GOOD_DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.local:5000/web:v1
        env:
        - name: GREETING
          value: hello
";

const GOOD_SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web-svc
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector:
    app: web
  ports:
  - port: 80
    nodePort: 30080
";

/// A valid Deployment named `name` whose container is `container` (indented 6 spaces, no
/// leading `- `): the way to put one hostile field in an otherwise good object.
fn deploy_with(name: &str, container: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  \
         selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      \
         labels:\n        app: {name}\n    spec:\n      containers:\n      - name: c\n{container}"
    )
}

/// A Deployment with a good container and `spec` lines (2-space indented) replacing the rest.
fn deploy_spec(name: &str, spec: &str) -> String {
    format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn service(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

const POD_TEMPLATE: &str = "  template:\n    metadata:\n      labels:\n        app: x\n    spec:\n      containers:\n      - name: c\n        image: web:v1\n";

fn httpget(extra: &str) -> String {
    format!("        image: web:v1\n        livenessProbe:\n          httpGet:\n{extra}")
}

/// 20,000 levels of flow nesting.
fn deep_nesting(open: &str, close: &str) -> Vec<u8> {
    let mut s =
        String::from("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: deep\nspec: ");
    s.push_str(&open.repeat(20_000));
    s.push_str(&close.repeat(20_000));
    s.push('\n');
    s.into_bytes()
}

/// The classic billion laughs: ten levels of ten aliases each.
fn billion_laughs() -> Vec<u8> {
    let mut s = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..10 {
        let p = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    s.push_str("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: lol\n  annotations:\n    x: *a9\n");
    s.into_bytes()
}

/// Merge keys multiplying: each level merges the previous twice.
fn merge_bomb() -> Vec<u8> {
    let mut s = String::from("l0: &l0 {a: 1, b: 2, c: 3, d: 4}\n");
    for i in 1..40 {
        let p = i - 1;
        s.push_str(&format!(
            "l{i}: &l{i} {{<<: [*l{p}, *l{p}], k{i}: *l{p}}}\n"
        ));
    }
    s.push_str("apiVersion: v1\nkind: Service\nmetadata:\n  name: m\nspec: *l39\n");
    s.into_bytes()
}

/// Deterministic noise (xorshift), mostly not UTF-8.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn utf16le(text: &str, bom: bool) -> Vec<u8> {
    let mut out = if bom { vec![0xFF, 0xFE] } else { vec![] };
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// One hostile commit: files (under `hostile/`) and what the errors must say.
struct Case {
    name: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    /// The file the (first matching) error must start with.
    file: &'static str,
    /// Text one error naming `file` must contain.
    expect: &'static str,
    /// Whether that error must carry a line number (`file:N`).
    line: bool,
}

fn case(
    name: &'static str,
    file: &'static str,
    body: impl Into<Vec<u8>>,
    expect: &'static str,
) -> Case {
    Case {
        name,
        files: vec![(file, body.into())],
        file,
        expect,
        line: true,
    }
}

impl Case {
    /// For errors about the file as a whole (size, encoding), which have no line.
    fn no_line(mut self) -> Case {
        self.line = false;
        self
    }
}

fn cases() -> Vec<Case> {
    let long_name = "a".repeat(254);
    let long_name: &'static str = Box::leak(long_name.into_boxed_str());
    let long_label = "v".repeat(64);
    let long_prefix = format!("{}/k", "p".repeat(254));
    let mut big = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  annotations:\n    x: \"",
    );
    big.push_str(&"x".repeat(5 << 20));
    big.push_str("\"\n");
    let mut fat_annotations = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: fat\n  annotations:\n    x: \"",
    );
    fat_annotations.push_str(&"x".repeat(300 * 1024));
    fat_annotations.push_str("\"\nspec:\n  ports:\n  - port: 80\n");
    let mut huge_object = deploy_with("huge", "        image: web:v1\n        env:\n");
    let mut i = 0;
    while huge_object.len() < 2_000_000 {
        huge_object.push_str(&format!(
            "        - name: V{i}\n          value: {}\n",
            "x".repeat(100)
        ));
        i += 1;
    }
    let mut many_docs = String::new();
    for _ in 0..1500 {
        many_docs.push_str("---\na: 1\n");
    }
    let valid = deploy_with("fine", "        image: web:v1\n");
    vec![
        // Resource exhaustion.
        case(
            "billion laughs",
            "hostile/laughs.yaml",
            billion_laughs(),
            "alias",
        ),
        case(
            "merge-key bomb",
            "hostile/merge.yaml",
            merge_bomb(),
            "alias",
        ),
        case(
            "20,000-deep flow sequences",
            "hostile/deep.yaml",
            deep_nesting("[", "]"),
            "deep",
        ),
        case(
            "20,000-deep flow mappings",
            "hostile/deep2.yaml",
            deep_nesting("{a: ", "}"),
            "deep",
        ),
        case(
            "a 5 MB file",
            "hostile/big.yaml",
            big,
            "limit of 4194304 bytes",
        )
        .no_line(),
        case(
            "an object of 2 MB (16,000 env entries)",
            "hostile/huge.yaml",
            huge_object,
            "more than the limit of 1572864",
        ),
        case(
            "1,500 documents",
            "hostile/docs.yaml",
            many_docs,
            "documents",
        ),
        case(
            "annotations over 256 KiB",
            "hostile/fat.yaml",
            fat_annotations,
            "262144",
        ),
        // Encodings and garbage.
        case(
            "binary noise",
            "hostile/noise.yaml",
            noise(64 * 1024),
            "not UTF-8",
        )
        .no_line(),
        case(
            "UTF-16 with a BOM",
            "hostile/utf16.yaml",
            utf16le(&valid, true),
            "UTF-16",
        )
        .no_line(),
        case(
            "UTF-16 without a BOM",
            "hostile/utf16nobom.yaml",
            utf16le(&valid, false),
            "NUL",
        )
        .no_line(),
        case(
            "invalid UTF-8 in a value",
            "hostile/latin1.yaml",
            [&valid.as_bytes()[..valid.len() - 1], b"\xE9t\xE9\n"].concat(),
            "not UTF-8",
        )
        .no_line(),
        case(
            "a NUL byte",
            "hostile/nul.yaml",
            format!("{valid}# \0\n"),
            "NUL",
        )
        .no_line(),
        case(
            "a YAML syntax error",
            "hostile/syntax.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
            "",
        ),
        case(
            "an unknown alias",
            "hostile/alias.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: *nope\n",
            "unknown anchor",
        ),
        case(
            "a top-level list",
            "hostile/list.yaml",
            "- apiVersion: v1\n- kind: Service\n",
            "must be a mapping",
        ),
        case(
            "kind as a mapping",
            "hostile/kind.yaml",
            "apiVersion: v1\nkind: {a: 1}\nmetadata:\n  name: x\n",
            "kind",
        ),
        case(
            "an unknown apiVersion",
            "hostile/api.yaml",
            deploy_spec("x", POD_TEMPLATE).replace("apps/v1", "apps/v9"),
            "apps/v9",
        ),
        // Duplicates.
        case(
            "duplicate keys",
            "hostile/dupkey.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n",
            "duplicate key",
        ),
        case(
            "the good Deployment defined again",
            "hostile/again.yaml",
            GOOD_DEPLOY,
            "defined twice",
        ),
        // Numbers.
        case(
            "replicas overflowing i64",
            "hostile/overflow.yaml",
            deploy_spec(
                "x",
                &format!("  replicas: 99999999999999999999999\n{POD_TEMPLATE}"),
            ),
            "replicas",
        ),
        case(
            "replicas overflowing i32",
            "hostile/overflow32.yaml",
            deploy_spec("x", &format!("  replicas: 2147483648\n{POD_TEMPLATE}")),
            "replicas",
        ),
        case(
            "negative replicas",
            "hostile/negative.yaml",
            deploy_spec("x", &format!("  replicas: -1\n{POD_TEMPLATE}")),
            "replicas",
        ),
        case(
            "fractional replicas",
            "hostile/half.yaml",
            deploy_spec("x", &format!("  replicas: 1.5\n{POD_TEMPLATE}")),
            "replicas",
        ),
        case(
            "a negative port",
            "hostile/port-neg.yaml",
            service("p", "  ports:\n  - port: -1\n"),
            "out of range",
        ),
        case(
            "port 0",
            "hostile/port0.yaml",
            service("p", "  ports:\n  - port: 0\n"),
            "out of range",
        ),
        case(
            "port 65536",
            "hostile/port-big.yaml",
            service("p", "  ports:\n  - port: 65536\n"),
            "out of range",
        ),
        case(
            "containerPort 70000",
            "hostile/cport.yaml",
            deploy_with(
                "x",
                "        image: web:v1\n        ports:\n        - containerPort: 70000\n",
            ),
            "out of range",
        ),
        case(
            "nodePort below the range",
            "hostile/np-low.yaml",
            service(
                "p",
                "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 29999\n",
            ),
            "30000-32767",
        ),
        case(
            "targetPort 0",
            "hostile/tport.yaml",
            service("p", "  ports:\n  - port: 80\n    targetPort: 0\n"),
            "out of range",
        ),
        case(
            "maxSurge and maxUnavailable both 0",
            "hostile/strategy.yaml",
            deploy_spec(
                "x",
                &format!(
                    "  strategy:\n    rollingUpdate:\n      maxSurge: 0\n      maxUnavailable: 0\n{POD_TEMPLATE}"
                ),
            ),
            "maxUnavailable",
        ),
        // Names and labels.
        case(
            "a 254-character name",
            "hostile/longname.yaml",
            deploy_with(long_name, "        image: web:v1\n"),
            "at most 253",
        ),
        case(
            "a name with shell metacharacters",
            "hostile/shname.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: \"web; rm -rf /\"\nspec:\n  ports:\n  - port: 80\n",
            "invalid name",
        ),
        case(
            "a name with a newline",
            "hostile/nlname.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: \"web\\nflush ruleset\"\nspec:\n  ports:\n  - port: 80\n",
            "invalid name",
        ),
        case(
            "an uppercase Service name",
            "hostile/upname.yaml",
            service("Web", "  ports:\n  - port: 80\n"),
            "invalid name",
        ),
        case(
            "a namespace with a space",
            "hostile/ns.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: kube system\nspec:\n  ports:\n  - port: 80\n",
            "invalid namespace",
        ),
        case(
            "a container name with $()",
            "hostile/cname.yaml",
            deploy_spec(
                "x",
                "  template:\n    metadata:\n      labels:\n        app: x\n    spec:\n      containers:\n      - name: $(reboot)\n        image: web:v1\n",
            ),
            "invalid container name",
        ),
        case(
            "an invalid label key",
            "hostile/lkey.yaml",
            service(
                "l",
                "  selector:\n    \"bad key!\": x\n  ports:\n  - port: 80\n",
            ),
            "invalid label key",
        ),
        case(
            "a label value of 64 characters",
            "hostile/lval.yaml",
            service(
                "l",
                &format!("  selector:\n    app: {long_label}\n  ports:\n  - port: 80\n"),
            ),
            "invalid label value",
        ),
        case(
            "a label value with $()",
            "hostile/lval2.yaml",
            service(
                "l",
                "  selector:\n    app: \"$(reboot)\"\n  ports:\n  - port: 80\n",
            ),
            "invalid label value",
        ),
        case(
            "a label key prefix over 253",
            "hostile/lprefix.yaml",
            service(
                "l",
                &format!("  selector:\n    {long_prefix}: x\n  ports:\n  - port: 80\n"),
            ),
            "invalid label key",
        ),
        case(
            "a selector not matching the template",
            "hostile/selector.yaml",
            deploy_spec(
                "x",
                "  selector:\n    matchLabels:\n      app: other\n  template:\n    metadata:\n      labels:\n        app: x\n    spec:\n      containers:\n      - name: c\n        image: web:v1\n",
            ),
            "selector",
        ),
        // Service clashes and addresses.
        case(
            "a NodePort clash",
            "hostile/np.yaml",
            service(
                "clash",
                "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 30080\n",
            ),
            "30080",
        ),
        case(
            "a ClusterIP clash",
            "hostile/cip.yaml",
            service("clash", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n"),
            "10.96.0.10",
        ),
        case(
            "a ClusterIP outside the CIDR",
            "hostile/cip2.yaml",
            service("out", "  clusterIP: 8.8.8.8\n  ports:\n  - port: 80\n"),
            "outside the service CIDR",
        ),
        case(
            "an nft rule in the ClusterIP",
            "hostile/cip3.yaml",
            service(
                "nft",
                "  clusterIP: \"10.96.0.11; flush ruleset\"\n  ports:\n  - port: 80\n",
            ),
            "clusterIP",
        ),
        case(
            "an nft rule in an endpoint IP",
            "hostile/ep.yaml",
            "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: ep\nsubsets:\n- addresses:\n  - ip: \"10.0.0.1 } ; flush ruleset\"\n  ports:\n  - port: 80\n",
            "invalid endpoint address",
        ),
        case(
            "a protocol that is not one",
            "hostile/proto.yaml",
            service(
                "p",
                "  ports:\n  - port: 80\n    protocol: \"tcp dport 22 accept\"\n",
            ),
            "protocol",
        ),
        case(
            "an affinity timeout of -1",
            "hostile/aff.yaml",
            service(
                "a",
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: -1\n  ports:\n  - port: 80\n",
            ),
            "timeoutSeconds",
        ),
        case(
            "an affinity timeout of 10^12",
            "hostile/aff2.yaml",
            service(
                "a",
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1000000000000\n  ports:\n  - port: 80\n",
            ),
            "timeoutSeconds",
        ),
        case(
            "an nft rule in an external IP",
            "hostile/extip.yaml",
            service(
                "e",
                "  externalIPs: [\"1.2.3.4 } ; flush ruleset\"]\n  ports:\n  - port: 80\n",
            ),
            "externalIPs",
        ),
        // YAML oddities.
        case(
            "a Python object tag",
            "hostile/tag.yaml",
            deploy_with(
                "x",
                "        image: !!python/object/apply:os.system [\"reboot\"]\n",
            ),
            "image",
        ),
        case(
            "a list as a key",
            "hostile/listkey.yaml",
            "apiVersion: v1\nkind: Service\n[a, b]: c\n",
            "plain value",
        ),
        case(
            "a port in hex beyond 65535",
            "hostile/hex.yaml",
            service("h", "  ports:\n  - port: 0x10000\n"),
            "out of range",
        ),
        case(
            "a port as a string",
            "hostile/strport.yaml",
            service("h", "  ports:\n  - port: \"80\"\n"),
            "port",
        ),
        case(
            "replicas .inf",
            "hostile/inf.yaml",
            deploy_spec("x", &format!("  replicas: .inf\n{POD_TEMPLATE}")),
            "replicas",
        ),
        case(
            "tabs for indentation",
            "hostile/tabs.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n\tname: x\n",
            "",
        ),
        // Strings that reach a command line, an OCI spec or an HTTP request.
        case(
            "an image with a shell command",
            "hostile/img.yaml",
            deploy_with("x", "        image: \"x; rm -rf /\"\n"),
            "invalid image",
        ),
        case(
            "an image with $()",
            "hostile/img2.yaml",
            deploy_with("x", "        image: \"$(reboot)\"\n"),
            "invalid image",
        ),
        case(
            "an image with ;",
            "hostile/img3.yaml",
            deploy_with("x", "        image: \"web;reboot\"\n"),
            "invalid image",
        ),
        case(
            "an image with a newline",
            "hostile/img4.yaml",
            deploy_with("x", "        image: \"web:v1\\nreboot\"\n"),
            "invalid image",
        ),
        case(
            "an image registry with ;",
            "hostile/img5.yaml",
            deploy_with("x", "        image: \"evil;x.com/web:v1\"\n"),
            "invalid image",
        ),
        case(
            "an env name with =",
            "hostile/env.yaml",
            deploy_with(
                "x",
                "        image: web:v1\n        env:\n        - name: \"A=B\"\n          value: x\n",
            ),
            "environment variable name",
        ),
        case(
            "an env name with a newline",
            "hostile/env2.yaml",
            deploy_with(
                "x",
                "        image: web:v1\n        env:\n        - name: \"A\\nB\"\n          value: x\n",
            ),
            "environment variable name",
        ),
        case(
            "a probe path with a space",
            "hostile/path.yaml",
            deploy_with(
                "x",
                &httpget("            path: \"/health z\"\n            port: 80\n"),
            ),
            "invalid path",
        ),
        case(
            "a probe path with CRLF",
            "hostile/path2.yaml",
            deploy_with(
                "x",
                &httpget("            path: \"/healthz\\r\\nHost: evil\"\n            port: 80\n"),
            ),
            "invalid path",
        ),
        case(
            "a probe header name with a colon",
            "hostile/hdr.yaml",
            deploy_with(
                "x",
                &httpget(
                    "            path: /healthz\n            port: 80\n            httpHeaders:\n            - name: \"Host: evil\"\n              value: x\n",
                ),
            ),
            "invalid header name",
        ),
        case(
            "a probe header value with CRLF",
            "hostile/hdr2.yaml",
            deploy_with(
                "x",
                &httpget(
                    "            path: /healthz\n            port: 80\n            httpHeaders:\n            - name: X-A\n              value: \"1\\r\\nX-Injected: 1\"\n",
                ),
            ),
            "invalid header value",
        ),
        case(
            "a probe host with a URL in it",
            "hostile/host.yaml",
            deploy_with(
                "x",
                &httpget("            host: \"evil.com/#\"\n            port: 80\n"),
            ),
            "invalid host",
        ),
        case(
            "a probe port 0",
            "hostile/pport.yaml",
            deploy_with("x", &httpget("            port: 0\n")),
            "out of range",
        ),
        case(
            "a probe scheme",
            "hostile/scheme.yaml",
            deploy_with(
                "x",
                &httpget("            port: 80\n            scheme: \"gopher\"\n"),
            ),
            "scheme",
        ),
        case(
            "a tcpSocket port name with spaces",
            "hostile/tcp.yaml",
            deploy_with(
                "x",
                "        image: web:v1\n        readinessProbe:\n          tcpSocket:\n            port: \"http; reboot\"\n",
            ),
            "port",
        ),
        case(
            "an exec probe without a command",
            "hostile/exec.yaml",
            deploy_with(
                "x",
                "        image: web:v1\n        livenessProbe:\n          exec:\n            command: []\n",
            ),
            "needs a command",
        ),
        case(
            "a preStop hook header name",
            "hostile/hook.yaml",
            deploy_with(
                "x",
                "        image: web:v1\n        lifecycle:\n          preStop:\n            httpGet:\n              port: 80\n              httpHeaders:\n              - name: \"X\\nY\"\n                value: x\n",
            ),
            "invalid header name",
        ),
        // Several bad files in one commit: each is named.
        Case {
            name: "two bad files at once",
            files: vec![
                (
                    "hostile/one.yaml",
                    service("one", "  ports:\n  - port: 0\n").into_bytes(),
                ),
                ("hostile/two.yaml", b"\xff\xfe\x00".to_vec()),
            ],
            file: "hostile/one.yaml",
            expect: "out of range",
            line: true,
        },
    ]
}

/// Waits for `id` and asserts it is Rejected as `case` says; returns how long it took.
fn check_rejected(serve: &Serve, id: &str, case: &Case) -> Duration {
    let started = Instant::now();
    let rev = serve.wait_revision(id);
    let took = started.elapsed();
    assert_eq!(phase(&rev), "Rejected", "{}: {rev}", case.name);
    let errs = errors(&rev);
    assert!(!errs.is_empty(), "{}: no errors: {rev}", case.name);
    for e in &errs {
        assert!(!e.contains('\n'), "{}: error is one line: {e:?}", case.name);
        assert!(
            e.len() < 2000,
            "{}: error is short: {} bytes",
            case.name,
            e.len()
        );
        // A clash names both places: the hostile file may come second.
        assert!(
            case.files.iter().any(|(f, _)| e.contains(&format!("{f}:"))),
            "{}: error names a file of the commit: {e}",
            case.name
        );
    }
    let named = errs
        .iter()
        .filter(|e| e.contains(&format!("{}:", case.file)))
        .find(|e| e.contains(case.expect));
    let Some(named) = named else {
        panic!(
            "{}: no error on {} says {:?}: {errs:?}",
            case.name, case.file, case.expect
        );
    };
    if case.line {
        let at = named.find(&format!("{}:", case.file)).unwrap_or_default();
        let rest = &named[at + case.file.len() + 1..];
        assert!(
            rest.starts_with(|c: char| c.is_ascii_digit()),
            "{}: error has a line: {named}",
            case.name
        );
    }
    took
}

/// What the source owns of an object: uid, generation (bumped by any spec change), labels,
/// annotations (the applying revision's among them) and spec. Not resourceVersion: the
/// controllers keep writing status.
fn identity(serve: &Serve, path: &str) -> Value {
    let o = serve.get_ok(path);
    let m = &o["metadata"];
    let mut annotations = m["annotations"].clone();
    if let Some(a) = annotations.as_object_mut() {
        // The Deployment controller's own bookkeeping.
        a.retain(|k, _| !k.starts_with("deployment.kubernetes.io/"));
    }
    serde_json::json!([
        m["uid"],
        m["generation"],
        m["labels"],
        annotations,
        o["spec"]
    ])
}

const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/default/deployments/web";
const SVC_PATH: &str = "/api/v1/namespaces/default/services/web-svc";

/// serve's resident memory, from /proc.
fn rss_kib(serve: &Serve) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn every_hostile_commit_is_rejected_and_the_last_good_state_keeps_serving() {
    let repos = Repos::new();
    repos.write("web.yaml", GOOD_DEPLOY);
    repos.write("web-svc.yaml", GOOD_SVC);
    let good = repos.commit("good");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&good)), "Applied");
    let deploy = identity(&serve, DEPLOY_PATH);
    let svc = identity(&serve, SVC_PATH);
    assert_eq!(svc[4]["clusterIP"], "10.96.0.10");

    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut slowest = (Duration::ZERO, "");
    let mut failed = Vec::new();
    for case in &cases {
        let _ = std::fs::remove_dir_all(repos.work.join("hostile"));
        for (path, bytes) in &case.files {
            let p = repos.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let id = repos.commit(case.name);
        repos.push();
        // Every case runs, and the failures are listed together at the end.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let took = check_rejected(&serve, &id, case);
            // Bounded time, even for the bombs (the time includes noticing the push). The
            // bound catches a blow-up or a hang, not slowness: a debug build on a busy CI
            // machine must pass it (the slowest case took 222 ms here).
            assert!(
                took < Duration::from_secs(15),
                "{}: took {took:?}",
                case.name
            );
            // Still serving, and the last good objects are untouched.
            assert_eq!(identity(&serve, DEPLOY_PATH), deploy, "{}", case.name);
            assert_eq!(identity(&serve, SVC_PATH), svc, "{}", case.name);
            took
        }));
        match outcome {
            Ok(took) if took > slowest.0 => slowest = (took, case.name),
            Ok(_) => {}
            Err(_) => failed.push(case.name),
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
    eprintln!(
        "{} cases; slowest {:?} ({})",
        cases.len(),
        slowest.0,
        slowest.1
    );
    let rss = rss_kib(&serve);
    eprintln!("serve's resident memory after the corpus: {rss} KiB");
    assert!(
        rss < 512 * 1024,
        "serve's memory after the corpus: {rss} KiB"
    );

    // Hostile-looking strings that are valid data are accepted and stored verbatim: the
    // agent passes them as argv, OCI env and HTTP header values, never to a shell (see the
    // unit tests at the end of this file).
    let _ = std::fs::remove_dir_all(repos.work.join("hostile"));
    repos.write(
        "hostile/data.yaml",
        &deploy_with(
            "data",
            "        image: web:v1\n        command: [\"/bin/sh\", \"-c\", \"echo $(whoami); rm -rf /tmp/x\"]\n        env:\n        - name: WEIRD\n          value: \"$(rm -rf /) `reboot` ; | & > < \\\" '\"\n        readinessProbe:\n          httpGet:\n            path: \"/ready?q=%20;rm\"\n            port: 80\n            httpHeaders:\n            - name: X-Check\n              value: \"$(reboot); rm -rf / | nft flush ruleset\"\n",
        ),
    );
    let id = repos.commit("valid data that looks hostile");
    repos.push();
    let rev = serve.wait_revision(&id);
    assert_eq!(phase(&rev), "Applied", "{rev}");
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/data");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["env"][0]["value"], "$(rm -rf /) `reboot` ; | & > < \" '");
    assert_eq!(c["command"][2], "echo $(whoami); rm -rf /tmp/x");
    assert_eq!(
        c["readinessProbe"]["httpGet"]["httpHeaders"][0]["value"],
        "$(reboot); rm -rf / | nft flush ruleset"
    );
    assert_eq!(identity(&serve, DEPLOY_PATH), deploy);
}

#[test]
fn a_symlink_out_of_the_repository_is_refused_by_name() {
    let repos = Repos::new();
    repos.write("web.yaml", GOOD_DEPLOY);
    let good = repos.commit("good");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&good)), "Applied");
    let deploy = identity(&serve, DEPLOY_PATH);

    for (name, target) in [
        ("passwd.yaml", "/etc/passwd"),
        ("up.yaml", "../../../../etc/hostname"),
    ] {
        std::os::unix::fs::symlink(target, repos.work.join(name)).unwrap();
        let id = repos.commit(name);
        repos.push();
        let rev = serve.wait_revision(&id);
        assert_eq!(phase(&rev), "Rejected", "{rev}");
        let errs = errors(&rev);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{name}:")) && e.contains("leaves the repository")),
            "{errs:?}"
        );
        assert_eq!(identity(&serve, DEPLOY_PATH), deploy);
        repos.remove(name);
    }
}

#[test]
fn path_traversal_in_dash_dash_path_is_refused_at_start() {
    let repos = Repos::new();
    repos.write("deploy/web.yaml", GOOD_DEPLOY);
    repos.commit("good");
    repos.push();
    for path in ["../..", "deploy/../../x", "/etc"] {
        let out = std::process::Command::new(TEND)
            .args(["serve", "--listen", "127.0.0.1:0", "--state"])
            .arg(repos.state())
            .args(["--repo", repos.bare.to_str().unwrap(), "--path", path])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--path {path} refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(path) || stderr.contains("--path"),
            "--path {path}: {stderr}"
        );
    }
}

/// `--path deploy`, then a commit turns `deploy` into a symlink (out of the repository, or to
/// a directory inside it), then into a file. Read as "the directory is gone", such a commit
/// would prune everything; followed, a symlink would read outside the repository. Each is
/// rejected, naming `deploy`, and nothing is pruned.
#[test]
fn a_dash_dash_path_turned_into_a_symlink_is_rejected_not_pruned() {
    let repos = Repos::new();
    repos.write("deploy/web.yaml", GOOD_DEPLOY);
    repos.write(
        "other/web.yaml",
        &GOOD_DEPLOY.replace("replicas: 2", "replicas: 9"),
    );
    let good = repos.commit("good");
    repos.push();
    let serve = Serve::start(
        &["--repo", repos.bare.to_str().unwrap(), "--path", "deploy"],
        &repos.state(),
    );
    assert_eq!(phase(&serve.wait_revision(&good)), "Applied");
    let deploy = identity(&serve, DEPLOY_PATH);

    let dir = repos.work.join("deploy");
    let replace = |make: &dyn Fn()| {
        if dir.is_dir() && !dir.is_symlink() {
            std::fs::remove_dir_all(&dir).unwrap();
        } else {
            std::fs::remove_file(&dir).unwrap();
        }
        make();
    };
    let out = || std::os::unix::fs::symlink("/etc", &dir).unwrap();
    let inside = || std::os::unix::fs::symlink("other", &dir).unwrap();
    let file = || std::fs::write(&dir, GOOD_DEPLOY).unwrap();
    let steps: [(&str, &dyn Fn()); 3] = [
        ("a symlink out of the repository", &out),
        ("a symlink to a directory inside", &inside),
        ("a file", &file),
    ];
    for (what, make) in steps {
        replace(make);
        let id = repos.commit(what);
        repos.push();
        let rev = serve.wait_revision(&id);
        assert_eq!(phase(&rev), "Rejected", "{what}: {rev}");
        let errs = errors(&rev);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("deploy:") && e.contains("not a directory")),
            "{what}: {errs:?}"
        );
        assert_eq!(identity(&serve, DEPLOY_PATH), deploy, "{what}");
    }
    // Back to a directory: applied again, listing every file.
    replace(&|| {
        repos.write(
            "deploy/web.yaml",
            &GOOD_DEPLOY.replace("replicas: 2", "replicas: 3"),
        )
    });
    let id = repos.commit("a directory again");
    repos.push();
    assert_eq!(phase(&serve.wait_revision(&id)), "Applied");
    let d = serve.get_ok(DEPLOY_PATH);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["uid"], deploy[0]);
}

#[test]
fn the_alias_bomb_and_deep_nesting_are_refused_in_bounded_time_by_the_parser() {
    let limits = tend::manifest::Limits::default();
    for (name, bytes) in [
        ("laughs", billion_laughs()),
        ("merge", merge_bomb()),
        ("deep", deep_nesting("[", "]")),
        ("deep2", deep_nesting("{a: ", "}")),
    ] {
        let started = Instant::now();
        let parsed = tend::manifest::load_file(name, &bytes, &limits);
        let took = started.elapsed();
        assert!(!parsed.errors.is_empty(), "{name} refused");
        assert!(parsed.objects.is_empty(), "{name} yields nothing");
        // A blow-up or a hang, not speed: generous for a debug build on a busy machine.
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
    }
}

/// A request (name, method, path, body) and the status codes that may answer it.
type ApiCase = (
    &'static str,
    reqwest::Method,
    String,
    Vec<u8>,
    &'static [u16],
);

/// Hostile HTTP requests against a real serve: each gets a 4xx Status (never a 5xx, never a
/// hang), serve keeps answering, and the applied Deployment is untouched.
#[test]
fn hostile_api_requests_get_a_4xx_and_change_nothing() {
    let repos = Repos::new();
    repos.write("web.yaml", GOOD_DEPLOY);
    let good = repos.commit("good");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&good)), "Applied");
    let deploy = identity(&serve, DEPLOY_PATH);
    // A new connection per request: serve closes one whose body it refused half-read.
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let scale = "/apis/tend.dev/v1/namespaces/default/deployments/web/scale";
    let huge = vec![b' '; 5 << 20];
    let cases: Vec<ApiCase> = vec![
        ("scale: not JSON", reqwest::Method::POST, scale.into(), b"{replicas: 3".to_vec(), &[400]),
        ("scale: negative", reqwest::Method::POST, scale.into(), br#"{"replicas": -1}"#.to_vec(), &[400]),
        ("scale: overflow", reqwest::Method::POST, scale.into(), br#"{"replicas": 99999999999999999999999}"#.to_vec(), &[400]),
        ("scale: over i32", reqwest::Method::POST, scale.into(), br#"{"replicas": 2147483648}"#.to_vec(), &[400]),
        ("scale: a shell word", reqwest::Method::POST, scale.into(), br#"{"replicas": "3; rm -rf /"}"#.to_vec(), &[400]),
        ("scale: fractional", reqwest::Method::POST, scale.into(), br#"{"replicas": 1.5}"#.to_vec(), &[400]),
        ("scale: deep JSON", reqwest::Method::POST, scale.into(), [vec![b'['; 100_000], vec![b']'; 100_000]].concat(), &[400]),
        ("scale: 5 MB body", reqwest::Method::POST, scale.into(), huge.clone(), &[413]),
        ("rollback: negative revision", reqwest::Method::POST, "/apis/tend.dev/v1/namespaces/default/deployments/web/rollback".into(), br#"{"toRevision": -5}"#.to_vec(), &[400]),
        ("an unknown subresource", reqwest::Method::POST, "/apis/tend.dev/v1/namespaces/default/deployments/web/exec".into(), b"{}".to_vec(), &[404]),
        ("a pod named with a path", reqwest::Method::POST, "/api/v1/namespaces/default/pods".into(), br#"{"metadata":{"name":"../../../etc/cron.d/x"},"spec":{"containers":[{"name":"c","image":"x"}]}}"#.to_vec(), &[400]),
        ("a pod named with a newline", reqwest::Method::POST, "/api/v1/namespaces/default/pods".into(), br#"{"metadata":{"name":"a\nb"}}"#.to_vec(), &[400]),
        ("a namespace with an encoded slash", reqwest::Method::POST, "/api/v1/namespaces/..%2F..%2Fetc/pods".into(), br#"{"metadata":{"name":"a"}}"#.to_vec(), &[400]),
        ("a namespace of dots", reqwest::Method::POST, "/api/v1/namespaces/../pods".into(), br#"{"metadata":{"name":"a"}}"#.to_vec(), &[400, 404, 405]),
        ("status: not JSON", reqwest::Method::PUT, "/api/v1/namespaces/default/pods/nope/status".into(), noise(1000), &[400]),
        ("status: another name", reqwest::Method::PUT, "/api/v1/namespaces/default/pods/nope/status".into(), br#"{"metadata":{"name":"other"}}"#.to_vec(), &[400]),
        ("status: a bad resourceVersion", reqwest::Method::PUT, "/api/v1/namespaces/default/pods/nope/status".into(), br#"{"metadata":{"name":"nope","resourceVersion":"1; DROP"}}"#.to_vec(), &[400]),
        ("event: no reason", reqwest::Method::POST, "/api/v1/namespaces/default/events".into(), br#"{"involvedObject":{"kind":"Pod","name":"p"}}"#.to_vec(), &[400]),
        ("event: an unknown kind", reqwest::Method::POST, "/api/v1/namespaces/default/events".into(), br#"{"involvedObject":{"kind":"Secret","name":"p"},"reason":"x"}"#.to_vec(), &[400]),
        ("event: a name with a path", reqwest::Method::POST, "/api/v1/namespaces/default/events".into(), br#"{"involvedObject":{"kind":"Pod","name":"../x"},"reason":"x"}"#.to_vec(), &[400]),
        ("event: a namespace with a space", reqwest::Method::POST, "/api/v1/namespaces/default/events".into(), br#"{"involvedObject":{"kind":"Pod","name":"p","namespace":"a b"},"reason":"x"}"#.to_vec(), &[400]),
        ("event: UTF-16", reqwest::Method::POST, "/api/v1/namespaces/default/events".into(), utf16le(r#"{"reason":"x"}"#, true), &[400]),
        ("delete: bad options", reqwest::Method::DELETE, "/api/v1/namespaces/default/pods/nope".into(), b"{\"preconditions\":{\"resourceVersion\":[1]}}".to_vec(), &[400]),
        ("a label selector that does not parse", reqwest::Method::GET, "/api/v1/pods?labelSelector=a%20in%20(b".into(), vec![], &[400]),
        ("a field selector on an unknown field", reqwest::Method::GET, "/api/v1/pods?fieldSelector=spec.evil%3D1".into(), vec![], &[400]),
        ("a watch from a bad resourceVersion", reqwest::Method::GET, "/api/v1/pods?watch=1&resourceVersion=-1".into(), vec![], &[400]),
        ("an unknown resource", reqwest::Method::GET, "/api/v1/secrets".into(), vec![], &[404]),
        ("PATCH, which is not served", reqwest::Method::PATCH, DEPLOY_PATH.into(), b"{}".to_vec(), &[405]),
    ];
    for (name, method, path, body, codes) in &cases {
        let resp = http
            .request(method.clone(), format!("{}{path}", serve.url))
            .bearer_auth(&serve.token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send();
        let resp = resp.unwrap_or_else(|e| panic!("{name}: {e}"));
        let code = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        assert!(codes.contains(&code), "{name}: {code} {text}");
        if code != 404 || text.starts_with('{') {
            let status: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert_eq!(status["kind"], "Status", "{name}: {text}");
            let message = status["message"].as_str().unwrap_or_default();
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{name}: {text}"
            );
        }
        assert_eq!(
            serve.get_ok("/version")["major"],
            "0",
            "{name}: serve answers"
        );
    }
    // A header of 1 MB, and no token at all.
    let resp = http
        .get(format!("{}/api/v1/pods", serve.url))
        .bearer_auth(&serve.token)
        .header("x-junk", "a".repeat(1 << 20))
        .send();
    assert!(
        resp.map_or(true, |r| r.status().is_client_error()),
        "a 1 MB header is refused"
    );
    let code = http
        .get(format!("{}{DEPLOY_PATH}", serve.url))
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(code, 401);
    assert_eq!(identity(&serve, DEPLOY_PATH), deploy);
    let (_, pods) = serve.get("/api/v1/namespaces/default/pods");
    assert!(
        items(&pods)
            .iter()
            .all(|p| !p["metadata"]["name"].as_str().unwrap_or("").contains('/')),
        "{pods}"
    );
}

/// Strings that reach a container stay data: `process` builds runc's argv and env (JSON in
/// config.json, never a shell line) with shell metacharacters verbatim; an unknown `$(...)`
/// stays as written, as in Kubernetes.
#[test]
fn metacharacters_reach_the_oci_spec_as_data() {
    use tend::agent::runtime::bundle::{ImageConfig, process};
    use tend::agent::runtime::env::ServiceEnv;
    let container: k8s_openapi::api::core::v1::Container =
        serde_json::from_value(serde_json::json!({
            "name": "c",
            "image": "web:v1",
            "command": ["/bin/sh", "-c", "echo $(whoami); rm -rf /tmp/x"],
            "args": ["; reboot", "`id`", "a b"],
            "env": [
                {"name": "WEIRD", "value": "$(rm -rf /) `reboot` ; | & > < \" '"},
                {"name": "NL", "value": "line1\nline2=3"},
            ],
        }))
        .unwrap();
    let (image, none) = (ImageConfig::default(), ServiceEnv::default());
    let p = process(&image, &container, &none).unwrap();
    let env = p.env.strings();
    assert_eq!(
        p.args,
        [
            "/bin/sh",
            "-c",
            "echo $(whoami); rm -rf /tmp/x",
            "; reboot",
            "`id`",
            "a b"
        ]
    );
    assert!(
        env.contains(&"WEIRD=$(rm -rf /) `reboot` ; | & > < \" '".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&"NL=line1\nline2=3".to_string()), "{env:?}");
}

/// An HTTP probe's path and headers reach the wire as one request line and one header line:
/// a real probe against a listener on loopback that records the raw request.
#[test]
fn an_http_probe_sends_path_and_headers_as_data() {
    use std::io::{Read, Write};
    use tend::agent::probe::{Handler, ProbeKind, ProbeOutcome, Scheme, target};
    use tend::agent::prober::{NetProber, ProbeRunner};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        String::from_utf8(request).unwrap()
    });
    let handler = Handler::Http {
        scheme: Scheme::Http,
        host: None,
        port,
        path: "/ready/@evil.example/..;rm?q=$(reboot)&x=%0d%0a".to_string(),
        headers: vec![(
            "X-Check".into(),
            "$(reboot); rm -rf / | nft flush ruleset".into(),
        )],
    };
    let t = target(ProbeKind::Readiness, &handler, Some("127.0.0.1"), "cid").unwrap();
    let runtime = std::sync::Arc::new(tend::agent::runtime::runc::RecordingRuntime::default());
    let prober = NetProber::new(runtime).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(prober.run(&t, Duration::from_secs(5)));
    assert_eq!(outcome, ProbeOutcome::Success);
    let request = server.join().unwrap();
    let mut lines = request.split("\r\n");
    assert_eq!(
        lines.next(),
        Some("GET /ready/@evil.example/..;rm?q=$(reboot)&x=%0d%0a HTTP/1.1"),
        "{request}"
    );
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    assert!(
        headers.contains(&"x-check: $(reboot); rm -rf / | nft flush ruleset"),
        "{headers:?}"
    );
    assert!(
        headers.contains(&format!("host: 127.0.0.1:{port}").as_str()),
        "{headers:?}"
    );
}

/// Directory mode: a FIFO named like a manifest (opening it would wait for a writer forever)
/// and a symlink to a device are refused by name; the source keeps applying.
#[test]
fn a_fifo_or_a_device_in_a_directory_source_is_refused_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("web.yaml"), GOOD_DEPLOY).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo.yaml").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let serve = Serve::start(&["--dir", dir.to_str().unwrap()], &tmp.path().join("state"));
    let started = Instant::now();
    let list = serve.wait_for("/apis/tend.dev/v1/revisions", "a revision", |v| {
        items(v)
            .iter()
            .any(|r| phase(r) != "Pending" && !phase(r).is_empty())
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    let rev = items(&list).pop().unwrap();
    assert_eq!(phase(&rev), "Rejected", "{rev}");
    let errs = errors(&rev);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("fifo.yaml:") && e.contains("not a regular file")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("zero.yaml:") && e.contains("leaves the directory")),
        "{errs:?}"
    );
    assert_eq!(serve.get_ok("/version")["major"], "0");
}

/// File names are the author's too: a newline or escape in one must not split or colour the
/// one-line error that names it.
#[test]
fn a_file_name_with_control_characters_is_named_on_one_line() {
    let repos = Repos::new();
    repos.write("web.yaml", GOOD_DEPLOY);
    let good = repos.commit("good");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&good)), "Applied");
    repos.write("evil\nweb.yaml:1: all good\x1b[2J.yaml", "kind: [");
    let id = repos.commit("a file name with a newline");
    repos.push();
    let rev = serve.wait_revision(&id);
    assert_eq!(phase(&rev), "Rejected", "{rev}");
    let errs = errors(&rev);
    assert!(!errs.is_empty());
    for e in &errs {
        assert!(
            !e.chars().any(char::is_control),
            "one line, no escapes: {e:?}"
        );
        assert!(
            e.starts_with("evil\\nweb.yaml:1: all good\\u{1b}[2J.yaml:"),
            "{e:?}"
        );
    }
}

/// What reaches nftables from a Service is typed before any rule is built: addresses are
/// parsed (`Ipv4Addr`), ports are `u16`, and chain names are hashes, so a Service that got
/// past validation (or into the store by another way) cannot put words into a rule.
#[test]
fn nft_metacharacters_in_a_service_never_reach_a_rule() {
    use tend::agent::lb::model::ServiceInput;
    let service = |spec: Value| -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web; flush ruleset", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    };
    let bad_ip = service(
        serde_json::json!({"clusterIP": "10.96.0.9; flush ruleset", "ports": [{"port": 80}]}),
    );
    let err = ServiceInput::from_k8s(&bad_ip, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an address"), "{err}");
    let bad_port =
        service(serde_json::json!({"clusterIP": "10.96.0.9", "ports": [{"port": 70000}]}));
    assert!(ServiceInput::from_k8s(&bad_port, None).is_err());
    let endpoints: k8s_openapi::api::core::v1::Endpoints =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web; flush ruleset", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1 } ; flush ruleset"}, {"ip": "10.244.1.2"}],
                         "ports": [{"port": 8080}]}],
        }))
        .unwrap();
    let ok = service(serde_json::json!({"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}));
    let input = ServiceInput::from_k8s(&ok, Some(&endpoints));
    // Either the hostile address is refused or it is dropped; it never becomes rule text.
    if let Ok(input) = input {
        let text = format!("{input:?}");
        assert!(
            !text.contains("flush ruleset }") && !text.contains("10.0.0.1 }"),
            "{text}"
        );
    }
}

/// Crashes found by fuzzing (fuzz/), replayed through the path that crashed.
#[test]
fn fuzz_crashes_stay_fixed() {
    let limits = tend::manifest::Limits::default();
    // `tend scale`'s edit sliced a line at the parser's column, which counts characters,
    // as if it were a byte offset: a multibyte character before a key (here after a run of
    // CRs) panicked with "byte index is not a char boundary".
    let bytes = include_bytes!("fixtures/hostile/fuzz-edit-char-boundary.yaml");
    let text = std::str::from_utf8(bytes).unwrap();
    let parsed = tend::manifest::load_file("crash.yaml", bytes, &limits);
    let deployments: Vec<_> = parsed
        .objects
        .iter()
        .filter(|o| o.key.kind == tend::api::Kind::Deployment)
        .collect();
    assert!(!deployments.is_empty(), "{:?}", parsed.errors);
    for o in deployments {
        for edit in [
            tend::source::write::Edit::SetReplicas(7),
            tend::source::write::Edit::SetPaused(true),
        ] {
            let _ = tend::manifest::edit::apply_edit(text, &o.key, &edit);
        }
    }
}
