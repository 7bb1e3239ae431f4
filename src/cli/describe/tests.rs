use super::*;
use serde_json::json;

fn clock() -> Clock {
    Clock::fixed("2024-05-01T12:00:00Z")
}

fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "xgp-web", "namespace": "default", "uid": "d-1",
            "creationTimestamp": "2024-05-01T11:00:00Z",
            "labels": {"app": "xgp-web", "app.kubernetes.io/managed-by": "tend"},
            "annotations": {"deployment.kubernetes.io/revision": "2", "tend.dev/source-file": "web.yaml"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "xgp-web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "xgp-web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25",
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "env": [{"name": "MODE", "value": "prod"}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 80}, "periodSeconds": 5}}]}}},
        "status": {"replicas": 4, "updatedReplicas": 1, "availableReplicas": 3, "unavailableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}})
}

fn replicasets() -> Vec<Value> {
    let rs = |name: &str, rev: &str, replicas: i64| {
        json!({"metadata": {"name": name, "namespace": "default",
                "annotations": {"deployment.kubernetes.io/revision": rev},
                "ownerReferences": [{"kind": "Deployment", "name": "xgp-web", "uid": "d-1", "controller": true}]},
            "spec": {"replicas": replicas}, "status": {"replicas": replicas}})
    };
    vec![
        rs("xgp-web-old", "1", 3),
        rs("xgp-web-new", "2", 1),
        rs("xgp-web-older", "0", 0),
        json!({"metadata": {"name": "other-abc", "annotations": {"deployment.kubernetes.io/revision": "9"}}}),
    ]
}

fn event(kind: &str, name: &str, reason: &str, message: &str, count: i64) -> Value {
    json!({"metadata": {"name": format!("{name}.1"), "namespace": "default"},
        "involvedObject": {"kind": kind, "name": name},
        "type": "Normal", "reason": reason, "message": message, "count": count,
        "firstTimestamp": "2024-05-01T11:50:00Z", "lastTimestamp": "2024-05-01T11:59:00Z",
        "source": {"component": "deployment-controller"}})
}

#[test]
fn deployment_like_kubectl() {
    let events = events_for(
        &[
            event(
                "Deployment",
                "xgp-web",
                "ScalingReplicaSet",
                "Scaled up replica set xgp-web-new to 1",
                1,
            ),
            event(
                "Deployment",
                "xgp-web",
                "ScalingReplicaSet",
                "Scaled down replica set xgp-web-old to 3",
                2,
            ),
            event("Deployment", "other", "ScalingReplicaSet", "not mine", 1),
        ],
        &deployment(),
        Kind::Deployment,
    );
    let out = describe_deployment(&deployment(), &replicasets(), Some(&events), &clock());
    let want = "\
Name:                   xgp-web
Namespace:              default
CreationTimestamp:      Wed, 01 May 2024 11:00:00 +0000
Labels:                 app=xgp-web
                        app.kubernetes.io/managed-by=tend
Annotations:            deployment.kubernetes.io/revision: 2
                        tend.dev/source-file: web.yaml
Selector:               app=xgp-web
Replicas:               3 desired | 1 updated | 4 total | 3 available | 1 unavailable
StrategyType:           RollingUpdate
MinReadySeconds:        0
RollingUpdateStrategy:  25% max unavailable, 1 max surge
Pod Template:
  Labels:  app=xgp-web
  Containers:
   web:
    Image:      nginx:1.25
    Port:       80/TCP
    Host Port:  0/TCP
    Readiness:  http-get http://:80/healthz delay=0s timeout=1s period=5s #success=1 #failure=3
    Environment:
      MODE:        prod
    Mounts:        <none>
  Volumes:         <none>
  Node-Selectors:  <none>
  Tolerations:     <none>
Conditions:
  Type           Status  Reason
  ----           ------  ------
  Available      True    MinimumReplicasAvailable
  Progressing    True    ReplicaSetUpdated
OldReplicaSets:  xgp-web-old (3/3 replicas created)
NewReplicaSet:   xgp-web-new (1/1 replicas created)
Events:
  Type    Reason             Age                From                   Message
  ----    ------             ----               ----                   -------
  Normal  ScalingReplicaSet  10m                deployment-controller  Scaled up replica set xgp-web-new to 1
  Normal  ScalingReplicaSet  60s (x2 over 10m)  deployment-controller  Scaled down replica set xgp-web-old to 3
";
    assert_eq!(out, want, "\n{out}");
}

#[test]
fn deployment_without_events_or_replicasets() {
    let out = describe_deployment(&deployment(), &[], Some(&[]), &clock());
    assert!(
        out.contains("OldReplicaSets:  <none>\nNewReplicaSet:   <none>\nEvents:          <none>\n"),
        "\n{out}"
    );
    let out = describe_deployment(&deployment(), &[], None, &clock());
    assert!(!out.contains("Events"), "\n{out}");
}

#[test]
fn replicaset_counts_its_pods() {
    let rs = json!({"metadata": {"name": "xgp-web-new", "namespace": "default",
            "ownerReferences": [{"kind": "Deployment", "name": "xgp-web", "controller": true}]},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "xgp-web", "pod-template-hash": "new"}},
            "template": {"metadata": {"labels": {"app": "xgp-web", "pod-template-hash": "new"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
        "status": {"replicas": 3}});
    let pod = |phase: &str, hash: &str| json!({"metadata": {"labels": {"app": "xgp-web", "pod-template-hash": hash}}, "status": {"phase": phase}});
    let pods = [
        pod("Running", "new"),
        pod("Running", "new"),
        pod("Pending", "new"),
        pod("Running", "old"),
    ];
    let out = describe_replicaset(&rs, &pods, Some(&[]), &clock());
    let want = "\
Name:           xgp-web-new
Namespace:      default
Selector:       app=xgp-web,pod-template-hash=new
Labels:         <none>
Annotations:    <none>
Controlled By:  Deployment/xgp-web
Replicas:       3 current / 3 desired
Pods Status:    2 Running / 1 Waiting / 0 Succeeded / 0 Failed
Pod Template:
  Labels:  app=xgp-web
           pod-template-hash=new
  Containers:
   web:
    Image:         nginx
    Port:          <none>
    Host Port:     <none>
    Environment:   <none>
    Mounts:        <none>
  Volumes:         <none>
  Node-Selectors:  <none>
  Tolerations:     <none>
Events:            <none>
";
    assert_eq!(out, want, "\n{out}");
}

#[test]
fn pod_with_states() {
    let pod = json!({"metadata": {"name": "xgp-web-new-abcde", "namespace": "default",
            "labels": {"app": "xgp-web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "xgp-web-new", "controller": true}]},
        "spec": {"nodeName": "node-1", "priority": 0, "serviceAccountName": "default",
            "containers": [{"name": "web", "image": "nginx:1.25",
            "ports": [{"containerPort": 80}, {"containerPort": 443}]}]},
        "status": {"phase": "Running", "hostIP": "192.168.1.10", "podIP": "10.244.1.2",
            "podIPs": [{"ip": "10.244.1.2"}], "startTime": "2024-05-01T11:59:00Z",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 1,
                "containerID": "runc://abc", "imageID": "sha256:img",
                "state": {"running": {"startedAt": "2024-05-01T11:59:30Z"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "Error",
                    "startedAt": "2024-05-01T11:59:01Z", "finishedAt": "2024-05-01T11:59:29Z"}}}]}});
    let out = describe_pod(&pod, Some(&[]), &clock());
    let want = "\
Name:             xgp-web-new-abcde
Namespace:        default
Priority:         0
Service Account:  default
Node:             node-1/192.168.1.10
Start Time:       Wed, 01 May 2024 11:59:00 +0000
Labels:           app=xgp-web
Annotations:      <none>
Status:           Running
IP:               10.244.1.2
IPs:
  IP:           10.244.1.2
Controlled By:  ReplicaSet/xgp-web-new
Containers:
  web:
    Container ID:   runc://abc
    Image:          nginx:1.25
    Image ID:       sha256:img
    Ports:          80/TCP, 443/TCP
    Host Ports:     0/TCP, 0/TCP
    State:          Running
      Started:      Wed, 01 May 2024 11:59:30 +0000
    Last State:     Terminated
      Reason:       Error
      Exit Code:    137
      Started:      Wed, 01 May 2024 11:59:01 +0000
      Finished:     Wed, 01 May 2024 11:59:29 +0000
    Ready:          True
    Restart Count:  1
    Environment:    <none>
    Mounts:         <none>
Conditions:
  Type           Status
  Ready          True 
Volumes:         <none>
QoS Class:       BestEffort
Node-Selectors:  <none>
Tolerations:     <none>
Events:          <none>
";
    assert_eq!(out, want, "\n{out}");
}

#[test]
fn service_with_endpoints() {
    let svc = json!({"metadata": {"name": "xgp-web", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "selector": {"app": "xgp-web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30123, "protocol": "TCP"},
                      {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}],
            "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Cluster"}});
    let ep = json!({"subsets": [{"addresses": [{"ip": "10.244.1.2"}, {"ip": "10.244.1.3"}],
        "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]}]});
    let out = describe_service(&svc, Some(&ep), Some(&[]), &clock());
    let want = "\
Name:                     xgp-web
Namespace:                default
Labels:                   <none>
Annotations:              <none>
Selector:                 app=xgp-web
Type:                     NodePort
IP:                       10.96.0.10
IPs:                      10.96.0.10
Port:                     http  80/TCP
TargetPort:               8080/TCP
NodePort:                 http  30123/TCP
Endpoints:                10.244.1.2:8080,10.244.1.3:8080
Port:                     metrics  9090/TCP
TargetPort:               metrics/TCP
Endpoints:                10.244.1.2:9090,10.244.1.3:9090
Session Affinity:         ClientIP
External Traffic Policy:  Cluster
Events:                   <none>
";
    assert_eq!(out, want, "\n{out}");
}

#[test]
fn node_with_pods() {
    let node = json!({"metadata": {"name": "node-1", "creationTimestamp": "2024-04-01T12:00:00Z",
            "labels": {"kubernetes.io/hostname": "node-1"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady",
                "message": "tend agent is posting ready status",
                "lastHeartbeatTime": "2024-05-01T11:59:50Z", "lastTransitionTime": "2024-04-01T12:00:10Z"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "node-1"}],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "tend-0.1.0", "architecture": "amd64"}}});
    let pods = [
        json!({"metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": "2024-05-01T11:00:00Z"},
        "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}}),
    ];
    let out = describe_node(&node, &pods, None, &clock());
    let want = "\
Name:               node-1
Roles:              <none>
Labels:             kubernetes.io/hostname=node-1
Annotations:        <none>
CreationTimestamp:  Mon, 01 Apr 2024 12:00:00 +0000
Taints:             <none>
Unschedulable:      false
Conditions:
  Type    Status  LastHeartbeatTime                 LastTransitionTime                Reason       Message
  ----    ------  -----------------                 ------------------                ------       -------
  Ready   True    Wed, 01 May 2024 11:59:50 +0000   Mon, 01 Apr 2024 12:00:10 +0000   AgentReady   tend agent is posting ready status
Addresses:
  InternalIP:  192.168.1.10
  Hostname:    node-1
Capacity:
  cpu:     2
  memory:  4Gi
  pods:    110
System Info:
  Architecture:       amd64
  Kubelet Version:    tend-0.1.0
PodCIDR:              10.244.1.0/24
PodCIDRs:             10.244.1.0/24
Non-terminated Pods:  (1 in total)
  Namespace           Name   Age
  ---------           ----   ---
  default             web-1  60m
";
    assert_eq!(out, want, "\n{out}");
}

#[test]
fn rejected_revision_shows_every_error() {
    let rev = json!({"apiVersion": "tend.dev/v1", "kind": "Revision",
        "metadata": {"name": "4f2a9c1e7b3d5a6f8e9d0c1b2a3f4e5d6c7b8a9f", "creationTimestamp": "2024-05-01T11:59:00Z"},
        "spec": {"message": "Break things\n\nOn purpose.", "author": "Ann Dev <ann@example.com>",
            "time": "2024-05-01T11:58:00Z", "parent": null, "source": "git /srv/app.git (main)", "sequence": 7},
        "status": {"phase": "Rejected",
            "errors": ["web.yaml:12:7: spec.template.spec.containers[0].image: required value, a container needs an image",
                       "svc.yaml:9:15: spec.ports[0].nodePort: 40000 is outside 30000-32767"],
            "warnings": []}});
    let out = describe_revision(&rev, &clock());
    let want = "\
Name:      4f2a9c1e7b3d5a6f8e9d0c1b2a3f4e5d6c7b8a9f
Short ID:  4f2a9c1e7b3d
Parent:    <none>
Source:    git /srv/app.git (main)
Sequence:  7
Author:    Ann Dev <ann@example.com>
Time:      Wed, 01 May 2024 11:58:00 +0000
Recorded:  Wed, 01 May 2024 11:59:00 +0000
Message:   Break things
           
           On purpose.
Phase:     Rejected
Changes:   <none>
Errors (2):
  web.yaml:12:7: spec.template.spec.containers[0].image: required value, a container needs an image
  svc.yaml:9:15: spec.ports[0].nodePort: 40000 is outside 30000-32767
Warnings:  <none>
Objects:   <none>
";
    assert_eq!(out, want, "\n{out}");
}

#[test]
fn applied_revision_lists_objects() {
    let rev = json!({"metadata": {"name": "sha256:0123456789abcdef"},
        "spec": {"message": "dir change", "parent": "sha256:fff"},
        "status": {"phase": "Applied", "changes": {"created": 1, "updated": 0, "pruned": 1},
            "objects": ["deployment/web", "service/web"]}});
    let out = describe_revision(&rev, &clock());
    assert!(out.contains("Short ID:  0123456789ab\n"), "\n{out}");
    assert!(
        out.contains("Changes:   1 created, 0 updated, 1 pruned\n"),
        "\n{out}"
    );
    assert!(
        out.ends_with("Objects (2):\n  deployment/web\n  service/web\n"),
        "\n{out}"
    );
}

#[test]
fn probes() {
    assert_eq!(
        describe_probe(&json!({"tcpSocket": {"port": 5432}, "initialDelaySeconds": 3})),
        "tcp-socket :5432 delay=3s timeout=1s period=10s #success=1 #failure=3"
    );
    assert_eq!(
        describe_probe(&json!({"exec": {"command": ["cat", "/tmp/ok"]}})),
        "exec [cat /tmp/ok] delay=0s timeout=1s period=10s #success=1 #failure=3"
    );
}
