//! Small text helpers shared by the config and manifest error reports (and
//! compiled into `build.rs`, so std only).

/// `line` cut to about `max` characters by eliding its middle, so both the
/// key it starts with and the explanation it ends with stay readable.
pub fn elide(line: &str, max: usize) -> String {
    let n = line.chars().count();
    if n <= max {
        return line.to_string();
    }
    let head: String = line.chars().take(max * 2 / 3).collect();
    let tail: String = line.chars().skip(n - max / 3).collect();
    format!("{head} … ({} characters cut) … {tail}", n - head.chars().count() - tail.chars().count())
}

#[cfg(test)]
mod tests {
    #[test]
    fn elides_the_middle_of_long_lines_only() {
        assert_eq!(super::elide("short", 10), "short");
        let long = format!("key{}end", "x".repeat(100));
        let e = super::elide(&long, 30);
        assert!(e.starts_with("key") && e.ends_with("end") && e.contains("characters cut"), "{e}");
    }
}
