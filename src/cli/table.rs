//! Column alignment exactly as kubectl does it: Go's `text/tabwriter` (elastic tabstops).
//!
//! `kubectl get` uses minwidth 6 and padding 3; `kubectl describe` uses minwidth 0 and
//! padding 2. Cells are tab-terminated: the last cell of a line is never padded, and a column
//! is aligned only over a run of consecutive lines that all have a cell in it.

/// `kubectl get` tables: header and rows, every row as many cells as the header.
pub fn render(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    for row in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = row.iter().map(|c| one_line(c)).collect();
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    tabwrite(&text, 6, 3)
}

/// Replaces the characters that would break a table (tabs, newlines) with spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\t' || c == '\n' || c == '\r' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Aligns tab-separated cells as Go's `tabwriter.NewWriter(w, minwidth, 8, padding, ' ', 0)`.
pub fn tabwrite(text: &str, minwidth: usize, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_terminator('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut widths = Vec::new();
    let layout = Layout {
        lines: &lines,
        minwidth,
        padding,
    };
    layout.format(0, lines.len(), &mut widths, &mut out);
    out
}

struct Layout<'a> {
    lines: &'a [Vec<&'a str>],
    minwidth: usize,
    padding: usize,
}

impl Layout<'_> {
    /// Go's `(*Writer).format`: finds the blocks of column `widths.len()` between `line0` and
    /// `line1`, sizes each, and recurses into the next column within each block.
    fn format(&self, mut line0: usize, line1: usize, widths: &mut Vec<usize>, out: &mut String) {
        let column = widths.len();
        let mut this = line0;
        while this < line1 {
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            self.write_lines(line0, this, widths, out);
            line0 = this;
            let mut width = self.minwidth;
            while this < line1 && column + 1 < self.lines[this].len() {
                width = width.max(self.lines[this][column].chars().count() + self.padding);
                this += 1;
            }
            widths.push(width);
            self.format(line0, this, widths, out);
            widths.pop();
            line0 = this;
        }
        self.write_lines(line0, line1, widths, out);
    }

    fn write_lines(&self, from: usize, to: usize, widths: &[usize], out: &mut String) {
        for line in &self.lines[from..to] {
            for (j, cell) in line.iter().enumerate() {
                out.push_str(cell);
                if let Some(&width) = widths.get(j) {
                    let len = cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
                }
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn get_tables_use_three_space_gaps_and_minimum_width_six() {
        let out = render(
            &strings(&["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]),
            &[
                strings(&["web", "3/3", "3", "3", "5s"]),
                strings(&["a-longer-name", "0/1", "0", "0", "2d"]),
            ],
        );
        assert_eq!(
            out,
            "NAME            READY   UP-TO-DATE   AVAILABLE   AGE\n\
             web             3/3     3            3           5s\n\
             a-longer-name   0/1     0            0           2d\n"
        );
    }

    #[test]
    fn blocks_end_at_lines_without_the_column() {
        let text = "Name:\tx\nLonger Label:\ty\nSection:\n  a:\tb\n";
        assert_eq!(
            tabwrite(text, 0, 2),
            "Name:          x\nLonger Label:  y\nSection:\n  a:  b\n"
        );
    }

    #[test]
    fn empty_first_cells_are_padded_for_continuation_lines() {
        let text = "Labels:\ta=b\n\tc=d\nAnnotations:\t<none>\n";
        assert_eq!(
            tabwrite(text, 0, 2),
            "Labels:       a=b\n              c=d\nAnnotations:  <none>\n"
        );
    }
}
