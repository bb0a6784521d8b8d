//! The invoice PDF (`gatehouse::billing::pdf`) as a reader sees it: rendered, its text extracted
//! with `pdftotext -layout` (poppler-utils), every line's quantity, unit price and amount and
//! the totals found on the line they belong to; and its first page rendered to an image with
//! `pdftoppm`. `INVOICE_SAMPLE_DIR=<dir>` keeps the PDFs and PNGs there (docs/img comes from it).

use std::{path::Path, process::Command};

use chrono::{DateTime, NaiveDate, Utc};
use gatehouse::billing::pdf::{
    format_money, render, PdfCustomer, PdfInvoice, PdfLine, PdfPeriod, PdfSeller,
};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn january() -> PdfPeriod {
    PdfPeriod {
        start: at("2026-01-01T00:00:00Z"),
        end: at("2026-02-01T00:00:00Z"),
    }
}

fn line(description: &str, kind: &str, quantity: i64, unit: i64, period: PdfPeriod) -> PdfLine {
    PdfLine {
        description: description.into(),
        kind: kind.into(),
        quantity,
        unit_amount: unit,
        amount: quantity * unit,
        period,
    }
}

/// A month with an upgrade on Jan 15 at noon: base price, proration credit and charge, overage.
/// `amounts`: base, credit (positive here), charge, and the two overage unit prices, in minor
/// units of `currency`.
fn sample(currency: &str, amounts: [i64; 5]) -> PdfInvoice {
    let before = PdfPeriod {
        start: at("2026-01-15T12:00:00Z"),
        end: at("2026-02-01T00:00:00Z"),
    };
    let [base, credit, charge, tokens_unit, requests_unit] = amounts;
    let lines = vec![
        line("Starter plan, January 2026", "base", 1, base, january()),
        line(
            "Unused time on Starter after the upgrade to Pro on Jan 15, 2026 at 12:00 UTC \
             (16.5 of 31 days)",
            "proration_credit",
            1,
            -credit,
            before,
        ),
        line(
            "Remaining time on Pro from Jan 15, 2026 at 12:00 UTC (16.5 of 31 days)",
            "proration_charge",
            1,
            charge,
            before,
        ),
        line(
            "Gateway tokens beyond the 1,000,000 included in the plan, per 1,000 tokens \
             (3,345,000 used in the period)",
            "overage",
            2_345,
            tokens_unit,
            january(),
        ),
        line(
            "API requests beyond the 100,000 included, per 100 requests",
            "overage",
            125,
            requests_unit,
            january(),
        ),
    ];
    let total = lines.iter().map(|l| l.amount).sum();
    PdfInvoice {
        number: "in_01JH6Q2W8Z4XK3M5N7P9R0ST".into(),
        issued: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        due: NaiveDate::from_ymd_opt(2026, 2, 15).unwrap(),
        status: "open".into(),
        seller: PdfSeller {
            name: "Gatehouse Cloud Ltd.".into(),
            address_lines: vec![
                "1 Market Street, Suite 400".into(),
                "San Francisco, CA 94105".into(),
                "United States".into(),
            ],
            email: "billing@gatehouse.example".into(),
        },
        customer: PdfCustomer {
            organization_name: "Acme Corporation".into(),
            billing_email: Some("accounts@acme.example".into()),
        },
        period: january(),
        currency: currency.into(),
        lines,
        total,
    }
}

fn usd() -> PdfInvoice {
    sample("usd", [2_900, 1_543, 5_322, 2, 10])
}

fn jpy() -> PdfInvoice {
    sample("jpy", [3_000, 1_597, 5_500, 3, 15])
}

fn tool(name: &str) -> Command {
    Command::new(name)
}

/// True when pdftotext and pdftoppm are installed. In CI their absence fails the test (`.ci/run`
/// installs poppler-utils); elsewhere the test is skipped, loudly (as PostgreSQL's is).
fn poppler(test: &str) -> bool {
    let found = ["pdftotext", "pdftoppm"]
        .iter()
        .all(|t| Command::new(t).arg("-v").output().is_ok());
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        found || !in_ci,
        "pdftotext/pdftoppm are not installed: apt-get install poppler-utils"
    );
    if !found {
        eprintln!(
            "SKIPPED {test}: pdftotext/pdftoppm not installed (apt-get install poppler-utils)"
        );
    }
    found
}

fn sample_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("INVOICE_SAMPLE_DIR").map(Into::into)
}

/// Renders the invoice into `dir` and returns `pdftotext -layout`'s text.
fn rendered_text(invoice: &PdfInvoice, dir: &Path, name: &str) -> String {
    let pdf = render(invoice).unwrap();
    assert!(pdf.starts_with(b"%PDF-1."));
    let path = dir.join(format!("{name}.pdf"));
    std::fs::write(&path, &pdf).unwrap();
    if let Some(keep) = sample_dir() {
        std::fs::write(keep.join(format!("{name}.pdf")), &pdf).unwrap();
    }
    let out = tool("pdftotext")
        .args(["-layout", path.to_str().unwrap(), "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The one text line that contains `needle`.
fn row<'t>(text: &'t str, needle: &str) -> &'t str {
    let rows: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(rows.len(), 1, "{needle:?} on {} lines:\n{text}", rows.len());
    rows[0].trim_end()
}

/// Every line's quantity, unit price and amount on its row, then subtotal, total, amount due.
fn assert_amounts(invoice: &PdfInvoice, text: &str) {
    let money = |a: i64| format_money(a, &invoice.currency);
    for line in &invoice.lines {
        let start: String = line.description.chars().take(18).collect();
        let r = row(text, &start);
        let amount = money(line.amount);
        assert!(r.ends_with(&amount), "row {r:?} should end with {amount}");
        let cells: Vec<&str> = r
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let n = cells.len();
        assert!(n >= 4, "{r:?}");
        assert_eq!(cells[n - 1], amount, "{r:?}");
        assert_eq!(cells[n - 2], money(line.unit_amount), "{r:?}");
        let qty = cells[n - 3].replace(',', "");
        assert_eq!(qty, line.quantity.to_string(), "{r:?}");
    }
    let sum: i64 = invoice.lines.iter().map(|l| l.amount).sum();
    assert_eq!(sum, invoice.total);
    assert!(row(text, "Subtotal").ends_with(&money(sum)));
    let total = text
        .lines()
        .find(|l| l.trim_start().starts_with("Total"))
        .unwrap_or_else(|| panic!("no Total line:\n{text}"));
    assert!(total.trim_end().ends_with(&money(invoice.total)), "{total}");
    let due_label = format!("Amount due ({})", invoice.currency.to_uppercase());
    assert!(row(text, &due_label).ends_with(&money(invoice.total)));
}

#[test]
fn the_usd_invoice_text_carries_every_amount_and_the_total() {
    if !poppler("the_usd_invoice_text_carries_every_amount_and_the_total") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let invoice = usd();
    let text = rendered_text(&invoice, dir.path(), "invoice-usd");
    assert_amounts(&invoice, &text);
    // The credit is shown as one, and the figures a reader checks are all there.
    assert!(text.contains("-$15.43"), "{text}");
    assert!(text.contains("$46.90") && text.contains("$0.02"), "{text}");
    assert_eq!(invoice.total, 2_900 - 1_543 + 5_322 + 4_690 + 1_250);
    assert!(text.contains("$126.19 due Feb 15, 2026"), "{text}");
    for fact in [
        "Invoice",
        "Gatehouse Cloud Ltd.",
        "San Francisco, CA 94105",
        "billing@gatehouse.example",
        "in_01JH6Q2W8Z4XK3M5N7P9R0ST",
        "Feb 1, 2026",
        "Feb 15, 2026",
        "OPEN",
        "BILL TO",
        "Acme Corporation",
        "accounts@acme.example",
        "Jan 1, 2026 - Jan 31, 2026",
        "Proration credit",
        "Proration charge",
        "Overage",
        "Page 1 of 1",
    ] {
        assert!(text.contains(fact), "{fact:?} missing:\n{text}");
    }
    // The long description is wrapped, not cut: its last words are on lines of their own.
    assert!(text.contains("(3,345,000 used in"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "the period)"), "{text}");
}

#[test]
fn the_jpy_invoice_has_no_decimals() {
    if !poppler("the_jpy_invoice_has_no_decimals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let invoice = jpy();
    let text = rendered_text(&invoice, dir.path(), "invoice-jpy");
    assert_amounts(&invoice, &text);
    assert!(text.contains("-¥1,597"), "{text}");
    assert!(text.contains("¥7,035"), "{text}"); // 2,345 × ¥3
    assert!(text.contains(&format_money(invoice.total, "jpy")));
    assert!(!text.contains("¥3.00"), "{text}");
}

#[test]
fn a_long_invoice_goes_on_over_further_pages_with_every_line() {
    if !poppler("a_long_invoice_goes_on_over_further_pages_with_every_line") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut invoice = usd();
    invoice.number = "in_LONG".into();
    for i in 0..70 {
        invoice.lines.push(line(
            &format!("Project {i:02} gateway requests beyond the included, per 1,000"),
            "overage",
            i + 1,
            37,
            january(),
        ));
    }
    invoice.total = invoice.lines.iter().map(|l| l.amount).sum();
    let text = rendered_text(&invoice, dir.path(), "invoice-long");
    assert_amounts(&invoice, &text);
    let pages = text.matches('\u{c}').count().max(1);
    assert!(pages >= 3, "{pages} pages");
    assert!(text.contains(&format!("Page {pages} of {pages}")), "{text}");
    assert!(text.contains("Invoice in_LONG (continued)"));
    // The table's header is repeated on every page that has rows.
    for page in text.split('\u{c}').filter(|p| p.contains("Overage")) {
        assert!(page.contains("UNIT PRICE"), "{page}");
    }
    assert!(text.matches("UNIT PRICE").count() >= pages - 1);
}

#[test]
fn a_paid_invoice_says_so_and_leaves_nothing_due() {
    if !poppler("a_paid_invoice_says_so_and_leaves_nothing_due") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut invoice = usd();
    invoice.status = "paid".into();
    let text = rendered_text(&invoice, dir.path(), "invoice-paid");
    assert!(text.contains("PAID"), "{text}");
    assert!(text.contains("Paid in full"), "{text}");
    assert!(row(&text, "Amount due (USD)").ends_with("$0.00"), "{text}");
    let total = text
        .lines()
        .find(|l| l.trim_start().starts_with("Total"))
        .unwrap();
    assert!(total.trim_end().ends_with("$126.19"), "{text}");
}

#[test]
fn long_names_wrap_within_their_blocks() {
    if !poppler("long_names_wrap_within_their_blocks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut invoice = usd();
    invoice.seller.name = "Gatehouse Cloud Infrastructure and Platform Services Europe GmbH".into();
    invoice.customer.organization_name =
        "The Very Long Named Acme Corporation International Holdings of North America".into();
    invoice.customer.billing_email =
        Some("accounts-payable-department-invoices@acme-corporation-international.example".into());
    let text = rendered_text(&invoice, dir.path(), "invoice-long-names");
    assert_amounts(&invoice, &text);
    // Every word is there, and the billing period beside the name is not overwritten.
    for word in [
        "Gatehouse",
        "GmbH",
        "Holdings",
        "America",
        "accounts-payable",
    ] {
        assert!(text.contains(word), "{word}:\n{text}");
    }
    assert!(
        row(&text, "The Very Long Named Acme").contains("Jan 1, 2026 - Jan 31, 2026"),
        "{text}"
    );
    if let Some(keep) = sample_dir() {
        let out = tool("pdftoppm")
            .args(["-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile"])
            .arg(dir.path().join("invoice-long-names.pdf"))
            .arg(keep.join("invoice-long-names"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

#[test]
fn the_first_page_renders_to_an_image() {
    if !poppler("the_first_page_renders_to_an_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pdf = render(&usd()).unwrap();
    let path = dir.path().join("invoice.pdf");
    std::fs::write(&path, pdf).unwrap();
    let prefix = dir.path().join("invoice");
    let out = tool("pdftoppm")
        .args(["-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile"])
        .arg(&path)
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(dir.path().join("invoice.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    if let Some(keep) = sample_dir() {
        std::fs::write(keep.join("invoice-sample.png"), png).unwrap();
    }
}
