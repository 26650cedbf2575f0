//! A table of figures, printed as aligned text on a terminal and as Markdown in the report.

pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.headers.len(), "a cell per column");
        self.rows.push(row);
    }

    /// Columns padded to their widest cell; the first left-aligned, the others right-aligned.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|at| {
                std::iter::once(&self.headers)
                    .chain(&self.rows)
                    .map(|row| row[at].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(at, (cell, &width))| match at {
                        0 => format!("{cell:<width$}"),
                        _ => format!("{cell:>width$}"),
                    })
                    .collect();
                format!("{}\n", cells.join("  ").trim_end())
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let rule: Vec<String> = (0..self.headers.len())
            .map(|at| if at == 0 { "---" } else { "---:" }.to_string())
            .collect();
        let mut text = line(&self.headers) + &line(&rule);
        for row in &self.rows {
            text.push_str(&line(row));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_aligns_columns_and_markdown_has_a_rule() {
        let mut table = Table::new(&["method", "images/s"]);
        table.push(vec!["pillow-seq".into(), "8.9".into()]);
        table.push(vec!["prism".into(), "11.6".into()]);
        assert_eq!(
            table.text(),
            "method      images/s\npillow-seq       8.9\nprism           11.6\n"
        );
        assert_eq!(
            table.markdown(),
            "| method | images/s |\n| --- | ---: |\n| pillow-seq | 8.9 |\n| prism | 11.6 |\n"
        );
    }
}
