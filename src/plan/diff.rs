//! Human-readable diffs of a plan: unified diffs of each object's YAML, made with `similar`.

use super::{Action, Plan, projection};
use serde_json::Value;
use similar::TextDiff;

fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// A unified diff for every action, with `--- a/<kind>/<name>` headers like `kubectl diff`.
/// With `color`, added lines are green and removed lines red (ANSI).
pub fn render(plan: &Plan, color: bool) -> String {
    let mut out = String::new();
    for action in &plan.actions {
        let key = action.key();
        let (before, after) = match action {
            Action::Create { object, .. } => (String::new(), to_yaml(&projection(object))),
            Action::Update { before, after, .. } => {
                (to_yaml(&projection(before)), to_yaml(&projection(after)))
            }
            Action::Prune { before, .. } => (to_yaml(&projection(before)), String::new()),
        };
        let name = format!("{}/{}", key.kind.plural(), key.name);
        let diff = TextDiff::from_lines(&before, &after);
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string();
        for line in text.lines() {
            let painted = match (color, line.chars().next()) {
                (true, Some('+')) if !line.starts_with("+++") => format!("\x1b[32m{line}\x1b[0m"),
                (true, Some('-')) if !line.starts_with("---") => format!("\x1b[31m{line}\x1b[0m"),
                (true, Some('@')) => format!("\x1b[36m{line}\x1b[0m"),
                _ => line.to_string(),
            };
            out.push_str(&painted);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Kind, ObjectKey};
    use serde_json::json;

    #[test]
    fn update_renders_unified_diff() {
        let before = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        let after = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 4}});
        let plan = Plan {
            actions: vec![Action::Update {
                key: ObjectKey::new(Kind::Deployment, "default", "web"),
                patch: json_patch::diff(&before, &after),
                before,
                after,
            }],
        };
        let text = render(&plan, false);
        assert!(text.contains("--- a/deployments/web"), "{text}");
        assert!(text.contains("-  replicas: 3\n+  replicas: 4"), "{text}");
        assert!(render(&plan, true).contains("\x1b[32m+  replicas: 4\x1b[0m"));
    }
}
