//! A container's environment without a copy per container: the Service variables of a
//! namespace ([`ServiceEnv`], shared by every container started from the same Services) and
//! the merge of the image's, the Services' and the container's own variables ([`Env`]),
//! which reads them in place. Pure.
//!
//! Why: a container in a namespace of 2,000 Services gets 14,000 Service variables. Built
//! as owned strings for each container (the variables, the kubelet's merge, the runtime's
//! merge, `NAME=value` strings, a JSON value of `config.json` and its text), one start held
//! ~10 MB for a moment, and 50 pods starting at once left the agent at 110-220 MiB of heap
//! that glibc keeps after it is freed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Variables in definition order, where defining a name again replaces its value in place
/// (the kubelet's and the runtime's merges), held in one string: a namespace's Service
/// variables, computed once and shared (cloning is an `Arc` clone).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ServiceEnv(Arc<Packed>);

#[derive(Default, PartialEq, Eq)]
struct Packed {
    /// `NAMEvalueNAMEvalue...`
    text: String,
    /// Per variable: where its name ends and where its value ends (its name starts where
    /// the previous value ended).
    spans: Vec<(u32, u32)>,
    /// Indices into `spans`, ordered by name (a binary search finds a name).
    by_name: Vec<u32>,
}

impl ServiceEnv {
    pub fn len(&self) -> usize {
        self.0.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.spans.is_empty()
    }

    /// The `i`-th variable: name and value.
    fn at(&self, i: usize) -> (&str, &str) {
        let start = if i == 0 { 0 } else { self.0.spans[i - 1].1 };
        let (name_end, end) = self.0.spans[i];
        let text = &self.0.text;
        (
            &text[start as usize..name_end as usize],
            &text[name_end as usize..end as usize],
        )
    }

    /// The variables in definition order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.len()).map(|i| self.at(i))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let by_name = &self.0.by_name;
        by_name
            .binary_search_by(|&i| self.at(i as usize).0.cmp(name))
            .ok()
            .map(|found| self.at(by_name[found] as usize).1)
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for ServiceEnv {
    /// Later definitions of a name replace the earlier value in place. Beyond 4 GiB of text
    /// (never: 14,000 variables are half a megabyte) the rest is left out.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(vars: I) -> Self {
        let mut merged: Vec<(N, V)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (name, value) in vars {
            match index.get(name.as_ref()) {
                Some(&i) => merged[i].1 = value,
                None => {
                    index.insert(name.as_ref().to_string(), merged.len());
                    merged.push((name, value));
                }
            }
        }
        drop(index);
        let size: usize = merged
            .iter()
            .map(|(n, v)| n.as_ref().len() + v.as_ref().len())
            .sum();
        let mut packed = Packed {
            text: String::with_capacity(size),
            spans: Vec::with_capacity(merged.len()),
            by_name: Vec::new(),
        };
        for (name, value) in &merged {
            let (name, value) = (name.as_ref(), value.as_ref());
            let (Ok(name_end), Ok(end)) = (
                u32::try_from(packed.text.len() + name.len()),
                u32::try_from(packed.text.len() + name.len() + value.len()),
            ) else {
                break;
            };
            packed.text.push_str(name);
            packed.text.push_str(value);
            packed.spans.push((name_end, end));
        }
        let mut env = ServiceEnv(Arc::new(packed));
        let mut by_name: Vec<u32> = (0..env.len() as u32).collect();
        by_name.sort_by(|&a, &b| env.at(a as usize).0.cmp(env.at(b as usize).0));
        if let Some(packed) = Arc::get_mut(&mut env.0) {
            packed.by_name = by_name;
        }
        env
    }
}

impl From<Vec<(String, String)>> for ServiceEnv {
    fn from(vars: Vec<(String, String)>) -> Self {
        vars.into_iter().collect()
    }
}

impl std::fmt::Debug for ServiceEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Variables in definition order, a repeated name replacing the value in place, with their
/// index (for the few variables of an image or a container spec).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SmallEnv<'a> {
    entries: Vec<(&'a str, Cow<'a, str>)>,
    index: HashMap<&'a str, usize>,
}

impl<'a> SmallEnv<'a> {
    pub fn set(&mut self, name: &'a str, value: Cow<'a, str>) {
        match self.index.get(name) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(name, self.entries.len());
                self.entries.push((name, value));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.entries[i].1.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (*n, v.as_ref()))
    }
}

/// The kubelet's variables for a container: the Service variables, then the container's
/// `env` (a name of both takes the container's value at the Service variable's place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletEnv<'a> {
    pub services: &'a ServiceEnv,
    pub own: SmallEnv<'a>,
}

impl KubeletEnv<'_> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.own.get(name).or_else(|| self.services.get(name))
    }

    /// In order: the Service variables (the container's value where it defines the name),
    /// then the container's other variables.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let services = self
            .services
            .iter()
            .map(|(n, v)| (n, self.own.get(n).unwrap_or(v)));
        let own = self
            .own
            .iter()
            .filter(|(n, _)| self.services.get(n).is_none());
        services.chain(own)
    }
}

/// A container's final environment: the image's variables (with a default `PATH` first when
/// the image sets none), then the kubelet's; a name of both takes the kubelet's value at the
/// image's place (containerd's merge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env<'a> {
    pub image: SmallEnv<'a>,
    pub kubelet: KubeletEnv<'a>,
}

impl Env<'_> {
    /// `(name, value)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let image = self
            .image
            .iter()
            .map(|(n, v)| (n, self.kubelet.get(n).unwrap_or(v)));
        let kubelet = self
            .kubelet
            .iter()
            .filter(|(n, _)| self.image.get(n).is_none());
        image.chain(kubelet)
    }

    /// `NAME=value` strings (tests; [`Env`] serializes as them without building them).
    pub fn strings(&self) -> Vec<String> {
        self.iter().map(|(n, v)| format!("{n}={v}")).collect()
    }
}

impl serde::Serialize for Env<'_> {
    /// A list of `NAME=value` strings, written one by one.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Entry<'e>(&'e str, &'e str);
        impl serde::Serialize for Entry<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&format_args!("{}={}", self.0, self.1))
            }
        }
        serializer.collect_seq(self.iter().map(|(n, v)| Entry(n, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_env_keeps_order_replaces_in_place_and_finds_by_name() {
        let env: ServiceEnv = [("B", "1"), ("A", "2"), ("B", "3"), ("", "e"), ("C", "")]
            .into_iter()
            .collect();
        let all: Vec<(&str, &str)> = env.iter().collect();
        assert_eq!(all, [("B", "3"), ("A", "2"), ("", "e"), ("C", "")]);
        assert_eq!(env.get("B"), Some("3"));
        assert_eq!(env.get("A"), Some("2"));
        assert_eq!(env.get("C"), Some(""));
        assert_eq!(env.get(""), Some("e"));
        assert_eq!(env.get("D"), None);
        assert_eq!(env.len(), 4);
        assert!(ServiceEnv::default().is_empty());
        assert_eq!(ServiceEnv::default().get("A"), None);
    }

    #[test]
    fn container_values_take_the_service_place_and_image_places_win() {
        let services: ServiceEnv = [("S1", "a"), ("S2", "b"), ("SHARED", "svc")]
            .into_iter()
            .collect();
        let mut own = SmallEnv::default();
        own.set("MINE", "m".into());
        own.set("S2", "override".into());
        own.set("MINE", "m2".into());
        let kubelet = KubeletEnv {
            services: &services,
            own,
        };
        let mut image = SmallEnv::default();
        image.set("PATH", "/bin".into());
        image.set("SHARED", "img".into());
        image.set("LANG", "C".into());
        let env = Env { image, kubelet };
        assert_eq!(
            env.strings(),
            [
                "PATH=/bin",
                "SHARED=svc",
                "LANG=C",
                "S1=a",
                "S2=override",
                "MINE=m2"
            ]
        );
        let json = serde_json::to_string(&env).expect("json");
        assert_eq!(
            json,
            r#"["PATH=/bin","SHARED=svc","LANG=C","S1=a","S2=override","MINE=m2"]"#
        );
    }

    #[test]
    fn values_are_escaped_in_json() {
        let services: ServiceEnv = [("Q", "a\"b\\c\n")].into_iter().collect();
        let env = Env {
            image: SmallEnv::default(),
            kubelet: KubeletEnv {
                services: &services,
                own: SmallEnv::default(),
            },
        };
        let json = serde_json::to_string(&env).expect("json");
        let back: Vec<String> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, ["Q=a\"b\\c\n"]);
    }
}
