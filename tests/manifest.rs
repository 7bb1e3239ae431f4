use tend::manifest::{Limits, ParsedFile, load_file};

fn load_fixture(path: &str) -> ParsedFile {
    let bytes = std::fs::read(format!("tests/fixtures/{path}")).unwrap();
    load_file(path, &bytes, &Limits::default())
}

#[test]
fn dump_seeds() {
    let mut names: Vec<_> = std::fs::read_dir("tests/fixtures/seeds")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let p = load_fixture(&format!("seeds/{name}"));
        println!("== {name}: {} objects", p.objects.len());
        for e in &p.errors {
            println!("  E {e}");
        }
        for w in &p.warnings {
            println!("  W {w}");
        }
    }
}
