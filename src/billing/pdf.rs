//! An invoice as a PDF (SPEC §6, `GET …/invoices/{id}/pdf`): [`render`] lays a [`PdfInvoice`] out on
//! A4 pages with the PDF's built-in Helvetica (nothing embedded, so every viewer and
//! `pdftotext` reads it): the seller, the "Invoice" title with its number, dates and status, the
//! organization billed, the period, a table of every line (description wrapped, amounts
//! right-aligned), subtotal, total and amount due, and a footer with the page number. A table
//! longer than a page goes on over further pages, its header repeated.
//!
//! Money is integer minor units end to end; [`format_money`] shows it in the currency's own
//! exponent (USD and EUR 2, JPY 0, KWD 3, …), with the currency's symbol where it has a common
//! one in the font (`$`, `€`, `£`, `¥`) and its ISO code otherwise, thousands separated by commas
//! and a leading minus for credits (`-$12.50`).
//!
//! The types here are plain: the invoice store fills them from its rows. The text is encoded as
//! WinAnsi (the built-in fonts' encoding): a character outside it is shown as `?`.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use crate::error::Error;

/// An invoice as the PDF shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfInvoice {
    /// The invoice's id or number (`in_…`).
    pub number: String,
    pub issued: NaiveDate,
    pub due: NaiveDate,
    /// `draft`, `open`, `paid` or `void`.
    pub status: String,
    pub seller: PdfSeller,
    pub customer: PdfCustomer,
    /// The billing period, half-open `[start, end)`: shown as its first and last day.
    pub period: PdfPeriod,
    /// ISO 4217 code, either case (`usd`, `JPY`).
    pub currency: String,
    pub lines: Vec<PdfLine>,
    /// Minor units; must equal the sum of the lines' amounts.
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfSeller {
    pub name: String,
    pub address_lines: Vec<String>,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfCustomer {
    pub organization_name: String,
    pub billing_email: Option<String>,
}

/// `[start, end)`: an end at midnight is shown as the day before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdfPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfLine {
    pub description: String,
    /// `base`, `overage`, `proration_credit`, `proration_charge` (shown under the description).
    pub kind: String,
    pub quantity: i64,
    /// Minor units per unit of `quantity`.
    pub unit_amount: i64,
    /// Minor units; negative for a credit.
    pub amount: i64,
    pub period: PdfPeriod,
}

/// The number of decimal places of a currency's minor unit (ISO 4217; what Stripe uses).
pub fn currency_exponent(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND",
        "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    let code = currency.to_ascii_uppercase();
    if ZERO.contains(&code.as_str()) {
        0
    } else if THREE.contains(&code.as_str()) {
        3
    } else {
        2
    }
}

/// `amount` minor units of `currency` for people: `$1,234.50`, `-$12.00`, `¥1,200`,
/// `CHF 99.90`, `-KWD 1.250`.
pub fn format_money(amount: i64, currency: &str) -> String {
    let code = currency.to_ascii_uppercase();
    let exponent = currency_exponent(&code);
    let scale = 10u128.pow(exponent);
    let abs = amount.unsigned_abs() as u128;
    let (whole, fraction) = (abs / scale, abs % scale);
    let mut grouped = group_thousands(&whole.to_string());
    if exponent > 0 {
        grouped.push('.');
        grouped.push_str(&format!("{fraction:0width$}", width = exponent as usize));
    }
    let sign = if amount < 0 { "-" } else { "" };
    let symbol = match code.as_str() {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        _ => "",
    };
    if symbol.is_empty() {
        format!("{sign}{code} {grouped}")
    } else {
        format!("{sign}{symbol}{grouped}")
    }
}

/// `1234567` → `1,234,567` (ASCII digits in, commas between each group of three).
fn group_thousands(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// A whole number with thousands separators.
fn format_quantity(q: i64) -> String {
    let sign = if q < 0 { "-" } else { "" };
    format!("{sign}{}", group_thousands(&q.unsigned_abs().to_string()))
}

fn format_date(d: NaiveDate) -> String {
    d.format("%b %-d, %Y").to_string()
}

/// The first and last day of a half-open period.
fn period_days(p: &PdfPeriod) -> (NaiveDate, NaiveDate) {
    let start = p.start.date_naive();
    let last = if p.end > p.start {
        (p.end - Duration::seconds(1)).date_naive()
    } else {
        start
    };
    (start, last)
}

fn format_period(p: &PdfPeriod) -> String {
    let (a, b) = period_days(p);
    if a == b {
        format_date(a)
    } else {
        format!("{} - {}", format_date(a), format_date(b))
    }
}

fn kind_label(kind: &str) -> String {
    match kind {
        "base" => "Base price".into(),
        "overage" => "Overage".into(),
        "proration_credit" => "Proration credit".into(),
        "proration_charge" => "Proration charge".into(),
        other => other.replace('_', " "),
    }
}

/// The most lines a description may take in the table (longer ones end with "...").
const MAX_DESCRIPTION_LINES: usize = 12;
/// The most characters of any one text field that is rendered.
const MAX_TEXT: usize = 2000;

// ---------------------------------------------------------------------------------------------
// Fonts: the built-in Helvetica and Helvetica-Bold, WinAnsi-encoded; their advance widths (per
// 1000 units of the font size) for the codes 32..=255, from Adobe's AFM files.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Font {
    Regular,
    Bold,
}

impl Font {
    fn name(self) -> Name<'static> {
        match self {
            Font::Regular => Name(b"F1"),
            Font::Bold => Name(b"F2"),
        }
    }

    fn widths(self) -> &'static [u16; 224] {
        match self {
            Font::Regular => &HELVETICA,
            Font::Bold => &HELVETICA_BOLD,
        }
    }
}

/// The WinAnsi code of a character (`?` when it has none).
fn win_ansi(c: char) -> u8 {
    let u = c as u32;
    match u {
        0x20..=0x7e | 0xa0..=0xff => u as u8,
        0x09 | 0x0a | 0x0d => b' ',
        _ => match c {
            '€' => 0x80,
            '‚' => 0x82,
            'ƒ' => 0x83,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            'ˆ' => 0x88,
            '‰' => 0x89,
            'Š' => 0x8a,
            '‹' => 0x8b,
            'Œ' => 0x8c,
            'Ž' => 0x8e,
            '\u{2018}' => 0x91,
            '\u{2019}' => 0x92,
            '\u{201c}' => 0x93,
            '\u{201d}' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '˜' => 0x98,
            '™' => 0x99,
            'š' => 0x9a,
            '›' => 0x9b,
            'œ' => 0x9c,
            'ž' => 0x9e,
            'Ÿ' => 0x9f,
            '\u{2212}' => b'-',
            _ => b'?',
        },
    }
}

fn encode(s: &str) -> Vec<u8> {
    s.chars().take(MAX_TEXT).map(win_ansi).collect()
}

/// A character's advance in thousandths of the font size.
fn units(c: char, font: Font) -> u32 {
    match font.widths()[usize::from(win_ansi(c).max(32) - 32)] {
        0 => 556,
        w => u32::from(w),
    }
}

/// The width of `s` in points at `size`.
fn text_width(s: &str, font: Font, size: f32) -> f32 {
    let total: u32 = s.chars().take(MAX_TEXT).map(|c| units(c, font)).sum();
    total as f32 * size / 1000.0
}

/// Greedy word wrap to `max` points (the first [`MAX_TEXT`] characters); a word longer than a
/// line is cut. Linear in the text's length.
fn wrap(s: &str, font: Font, size: f32, max: f32) -> Vec<String> {
    let limit = (max * 1000.0 / size).floor() as u32;
    let space = units(' ', font);
    let text: String = s.chars().take(MAX_TEXT).collect();
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut width = 0u32;
    for (i, paragraph) in text.split('\n').enumerate() {
        if i > 0 {
            lines.push(std::mem::take(&mut line));
            width = 0;
        }
        for word in paragraph.split_whitespace() {
            let w: u32 = word.chars().map(|c| units(c, font)).sum();
            let gap = if line.is_empty() { 0 } else { space };
            if width + gap + w <= limit {
                if gap > 0 {
                    line.push(' ');
                }
                line.push_str(word);
                width += gap + w;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                width = 0;
            }
            // The word alone on the line, cut wherever it reaches the edge.
            for c in word.chars() {
                let cw = units(c, font);
                if width + cw > limit && !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                    width = 0;
                }
                line.push(c);
                width += cw;
            }
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Page geometry (points; A4) and colours.

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const LEFT: f32 = 50.0;
const RIGHT: f32 = PAGE_W - 50.0;
const TOP: f32 = PAGE_H - 50.0;
/// Nothing of the table goes below this (the footer lives under it).
const BOTTOM: f32 = 70.0;

const INK: (f32, f32, f32) = (0.11, 0.12, 0.14);
const MUTED: (f32, f32, f32) = (0.42, 0.45, 0.50);
const RULE: (f32, f32, f32) = (0.80, 0.82, 0.85);
const HEAD_FILL: (f32, f32, f32) = (0.94, 0.95, 0.96);
const ACCENT: (f32, f32, f32) = (0.13, 0.30, 0.60);

/// The table's columns: description and period from the left, the numbers right-aligned.
const COL_DESC: f32 = LEFT + 6.0;
const DESC_W: f32 = 196.0;
const COL_PERIOD: f32 = 262.0;
const PERIOD_W: f32 = 100.0;
const COL_QTY_R: f32 = 414.0;
const COL_UNIT_R: f32 = 482.0;
const COL_AMOUNT_R: f32 = RIGHT - 6.0;
const NUM_W: f32 = 62.0;

const BODY: f32 = 9.0;
const LEADING: f32 = 11.5;

/// One page being drawn.
struct Page {
    content: Content,
}

impl Page {
    fn new() -> Page {
        Page {
            content: Content::new(),
        }
    }

    fn text(&mut self, x: f32, y: f32, font: Font, size: f32, color: (f32, f32, f32), s: &str) {
        let c = &mut self.content;
        c.set_fill_rgb(color.0, color.1, color.2);
        c.begin_text();
        c.set_font(font.name(), size);
        c.next_line(x, y);
        c.show(Str(&encode(s)));
        c.end_text();
    }

    fn text_right(
        &mut self,
        right: f32,
        y: f32,
        font: Font,
        size: f32,
        color: (f32, f32, f32),
        s: &str,
    ) {
        let w = text_width(s, font, size);
        self.text(right - w, y, font, size, color, s);
    }

    /// Right-aligned in a column `width` wide: smaller type when it would not fit.
    fn number(&mut self, right: f32, y: f32, font: Font, width: f32, s: &str) {
        let size = fit(s, font, BODY, width);
        self.text_right(right, y, font, size, INK, s);
    }

    /// `s` wrapped to `width`, at most `max_lines` lines (the last one cut); returns the
    /// baseline below it.
    #[allow(clippy::too_many_arguments)]
    fn paragraph(
        &mut self,
        x: f32,
        mut y: f32,
        font: Font,
        size: f32,
        color: (f32, f32, f32),
        s: &str,
        width: f32,
        max_lines: usize,
    ) -> f32 {
        let leading = size * 1.28;
        for line in wrap(s, font, size, width).iter().take(max_lines) {
            self.text(x, y, font, size, color, line);
            y -= leading;
        }
        y
    }

    fn rule(&mut self, x1: f32, x2: f32, y: f32, width: f32, color: (f32, f32, f32)) {
        let c = &mut self.content;
        c.set_stroke_rgb(color.0, color.1, color.2);
        c.set_line_width(width);
        c.move_to(x1, y);
        c.line_to(x2, y);
        c.stroke();
    }

    fn fill(&mut self, x: f32, y: f32, w: f32, h: f32, color: (f32, f32, f32)) {
        let c = &mut self.content;
        c.set_fill_rgb(color.0, color.1, color.2);
        c.rect(x, y, w, h);
        c.fill_nonzero();
    }
}

/// A table row laid out: its wrapped texts and its height.
struct Row<'a> {
    line: &'a PdfLine,
    description: Vec<String>,
    period: Vec<String>,
    height: f32,
}

fn layout_row(line: &PdfLine) -> Row<'_> {
    let mut description = wrap(line.description.trim(), Font::Regular, BODY, DESC_W);
    if description.len() > MAX_DESCRIPTION_LINES {
        description.truncate(MAX_DESCRIPTION_LINES);
        if let Some(last) = description.last_mut() {
            while !last.is_empty()
                && text_width(&format!("{last} ..."), Font::Regular, BODY) > DESC_W
            {
                last.pop();
            }
            last.push_str(" ...");
        }
    }
    let period = wrap(&format_period(&line.period), Font::Regular, 8.0, PERIOD_W);
    let left = description.len() as f32 * LEADING + 10.0;
    let right = period.len() as f32 * 10.0;
    Row {
        line,
        description,
        period,
        height: left.max(right) + 10.0,
    }
}

/// Checks what a reader of the invoice relies on: the total is the sum of the lines.
fn check(invoice: &PdfInvoice) -> Result<(), Error> {
    let sum = invoice
        .lines
        .iter()
        .try_fold(0i64, |acc, l| acc.checked_add(l.amount));
    if sum != Some(invoice.total) {
        return Err(Error::Internal(anyhow::anyhow!(
            "invoice {}: the total {} is not the sum of its lines ({sum:?})",
            invoice.number,
            invoice.total
        )));
    }
    let code = invoice.currency.trim();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Error::Internal(anyhow::anyhow!(
            "invoice {}: currency {:?} is not an ISO 4217 code",
            invoice.number,
            invoice.currency
        )));
    }
    Ok(())
}

/// The invoice as a PDF document.
pub fn render(invoice: &PdfInvoice) -> Result<Vec<u8>, Error> {
    check(invoice)?;
    let currency = invoice.currency.to_ascii_uppercase();
    let money = |amount: i64| format_money(amount, &currency);
    let mut pages = vec![Page::new()];
    let mut y = first_page_header(&mut pages[0], invoice, &money);
    y = table_header(&mut pages[0], y);

    for line in &invoice.lines {
        let row = layout_row(line);
        if y - row.height < BOTTOM {
            let mut page = Page::new();
            y = continuation_header(&mut page, invoice);
            y = table_header(&mut page, y);
            pages.push(page);
        }
        let page = pages.last_mut().expect("at least one page");
        draw_row(page, &row, y, &money);
        y -= row.height;
    }

    // The totals stay together: on a new page when they do not fit.
    const TOTALS_H: f32 = 110.0;
    if y - TOTALS_H < BOTTOM {
        let mut page = Page::new();
        y = continuation_header(&mut page, invoice);
        pages.push(page);
    }
    let page = pages.last_mut().expect("at least one page");
    totals(page, invoice, y, &money);

    let count = pages.len();
    for (i, page) in pages.iter_mut().enumerate() {
        footer(page, invoice, i + 1, count);
    }
    Ok(write_document(invoice, pages))
}

/// Width of the seller's and the customer's blocks (left of the invoice's facts).
const BLOCK_W: f32 = 250.0;

fn first_page_header(page: &mut Page, inv: &PdfInvoice, money: &dyn Fn(i64) -> String) -> f32 {
    // The seller, top left: every text wrapped to its block (at most a few lines each).
    let mut y = TOP - 14.0;
    y = page.paragraph(LEFT, y, Font::Bold, 15.0, INK, &inv.seller.name, BLOCK_W, 3) - 2.0;
    for line in inv.seller.address_lines.iter().take(6) {
        y = page.paragraph(LEFT, y, Font::Regular, BODY, MUTED, line, BLOCK_W, 2);
    }
    if !inv.seller.email.is_empty() {
        y = page.paragraph(
            LEFT,
            y,
            Font::Regular,
            BODY,
            MUTED,
            &inv.seller.email,
            BLOCK_W,
            2,
        );
    }
    let seller_bottom = y + LEADING;

    // The title and the invoice's facts, top right.
    page.text_right(RIGHT, TOP - 20.0, Font::Bold, 26.0, ACCENT, "Invoice");
    let status = inv.status.to_ascii_uppercase();
    let facts = [
        ("Invoice number", inv.number.clone()),
        ("Date of issue", format_date(inv.issued)),
        ("Date due", format_date(inv.due)),
        ("Status", status.clone()),
    ];
    let mut fy = TOP - 44.0;
    for (label, value) in &facts {
        page.text(RIGHT - 235.0, fy, Font::Regular, BODY, MUTED, label);
        let color = match (*label, status.as_str()) {
            ("Status", "PAID") => (0.10, 0.50, 0.25),
            ("Status", "VOID") => (0.70, 0.15, 0.15),
            _ => INK,
        };
        let size = fit(value, Font::Bold, BODY, 165.0);
        page.text_right(RIGHT, fy, Font::Bold, size, color, value);
        fy -= LEADING + 1.0;
    }

    // Bill to, and the amount due.
    y = seller_bottom.min(fy) - 18.0;
    page.rule(LEFT, RIGHT, y + 8.0, 0.6, RULE);
    y -= 10.0;
    page.text(LEFT, y, Font::Bold, 7.5, MUTED, "BILL TO");
    page.text(330.0, y, Font::Bold, 7.5, MUTED, "BILLING PERIOD");
    y -= 14.0;
    page.text(
        330.0,
        y,
        Font::Regular,
        10.0,
        INK,
        &format_period(&inv.period),
    );
    let name = &inv.customer.organization_name;
    y = page.paragraph(LEFT, y, Font::Bold, 11.0, INK, name, BLOCK_W, 3) - 1.5;
    if let Some(email) = &inv.customer.billing_email {
        y = page.paragraph(LEFT, y, Font::Regular, BODY, MUTED, email, BLOCK_W, 2);
    }
    y -= 20.0;
    let (due_label, due) = amount_due(inv);
    let headline = format!("{} due {}", money(due), format_date(inv.due));
    if due_label == "Amount due" {
        page.text(LEFT, y, Font::Bold, 14.0, INK, &headline);
    } else {
        page.text(LEFT, y, Font::Bold, 14.0, INK, due_label);
    }
    y - 22.0
}

/// The size (at most `size`, at least 5 pt) at which `s` fits in `width`.
fn fit(s: &str, font: Font, size: f32, width: f32) -> f32 {
    let natural = text_width(s, font, size);
    if natural <= width {
        size
    } else {
        (size * width / natural).max(5.0)
    }
}

/// What is left to pay, and how the total line calls it.
fn amount_due(inv: &PdfInvoice) -> (&'static str, i64) {
    match inv.status.as_str() {
        "paid" => ("Paid in full - thank you", 0),
        "void" => ("This invoice is void", 0),
        _ => ("Amount due", inv.total),
    }
}

fn continuation_header(page: &mut Page, inv: &PdfInvoice) -> f32 {
    page.text(LEFT, TOP - 12.0, Font::Bold, 12.0, INK, &inv.seller.name);
    page.text_right(
        RIGHT,
        TOP - 12.0,
        Font::Bold,
        12.0,
        ACCENT,
        &format!("Invoice {} (continued)", inv.number),
    );
    TOP - 36.0
}

/// The header row of the table; returns the top of the first row.
fn table_header(page: &mut Page, y: f32) -> f32 {
    page.fill(LEFT, y - 20.0, RIGHT - LEFT, 20.0, HEAD_FILL);
    let ty = y - 13.5;
    page.text(COL_DESC, ty, Font::Bold, 7.5, MUTED, "DESCRIPTION");
    page.text(COL_PERIOD, ty, Font::Bold, 7.5, MUTED, "PERIOD");
    page.text_right(COL_QTY_R, ty, Font::Bold, 7.5, MUTED, "QTY");
    page.text_right(COL_UNIT_R, ty, Font::Bold, 7.5, MUTED, "UNIT PRICE");
    page.text_right(COL_AMOUNT_R, ty, Font::Bold, 7.5, MUTED, "AMOUNT");
    y - 20.0
}

fn draw_row(page: &mut Page, row: &Row, top: f32, money: &dyn Fn(i64) -> String) {
    let first = top - 15.0;
    let mut y = first;
    for line in &row.description {
        page.text(COL_DESC, y, Font::Regular, BODY, INK, line);
        y -= LEADING;
    }
    page.text(
        COL_DESC,
        y + 1.5,
        Font::Regular,
        7.5,
        MUTED,
        &kind_label(&row.line.kind),
    );
    let mut py = first;
    for line in &row.period {
        page.text(COL_PERIOD, py, Font::Regular, 8.0, MUTED, line);
        py -= 10.0;
    }
    page.number(
        COL_QTY_R,
        first,
        Font::Regular,
        NUM_W - 10.0,
        &format_quantity(row.line.quantity),
    );
    page.number(
        COL_UNIT_R,
        first,
        Font::Regular,
        NUM_W,
        &money(row.line.unit_amount),
    );
    page.number(
        COL_AMOUNT_R,
        first,
        Font::Regular,
        NUM_W + 4.0,
        &money(row.line.amount),
    );
    page.rule(LEFT, RIGHT, top - row.height, 0.4, RULE);
}

fn totals(page: &mut Page, inv: &PdfInvoice, top: f32, money: &dyn Fn(i64) -> String) {
    let label_x = 330.0;
    let mut y = top - 20.0;
    let subtotal: i64 = inv.lines.iter().map(|l| l.amount).sum();
    page.text(label_x, y, Font::Regular, BODY, MUTED, "Subtotal");
    page.number(COL_AMOUNT_R, y, Font::Regular, 120.0, &money(subtotal));
    y -= 18.0;
    page.rule(label_x, RIGHT, y + 11.0, 0.6, RULE);
    page.text(label_x, y, Font::Bold, 10.0, INK, "Total");
    page.text_right(COL_AMOUNT_R, y, Font::Bold, 10.0, INK, &money(inv.total));
    y -= 24.0;
    page.fill(
        label_x - 6.0,
        y - 8.0,
        RIGHT - label_x + 6.0,
        24.0,
        HEAD_FILL,
    );
    let (_, due) = amount_due(inv);
    let label = format!("Amount due ({})", inv.currency.to_ascii_uppercase());
    page.text(label_x, y, Font::Bold, 10.5, INK, &label);
    page.text_right(COL_AMOUNT_R, y, Font::Bold, 12.0, ACCENT, &money(due));
    y -= 36.0;
    let note = format!(
        "Amounts in {}. Questions about this invoice: {}",
        inv.currency.to_ascii_uppercase(),
        inv.seller.email
    );
    for line in wrap(&note, Font::Regular, 8.0, RIGHT - LEFT) {
        page.text(LEFT, y, Font::Regular, 8.0, MUTED, &line);
        y -= 10.0;
    }
}

fn footer(page: &mut Page, inv: &PdfInvoice, number: usize, count: usize) {
    page.rule(LEFT, RIGHT, 50.0, 0.4, RULE);
    let left = format!("{} - Invoice {}", inv.seller.name, inv.number);
    let size = fit(&left, Font::Regular, 7.5, RIGHT - LEFT - 80.0);
    page.text(LEFT, 38.0, Font::Regular, size, MUTED, &left);
    page.text_right(
        RIGHT,
        38.0,
        Font::Regular,
        7.5,
        MUTED,
        &format!("Page {number} of {count}"),
    );
}

fn write_document(inv: &PdfInvoice, pages: Vec<Page>) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let mut next = 6;
    let mut ids = Vec::with_capacity(pages.len());
    for _ in &pages {
        ids.push((Ref::new(next), Ref::new(next + 1)));
        next += 2;
    }
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(ids.iter().map(|(page, _)| *page))
        .count(ids.len() as i32);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let title = format!("Invoice {}", inv.number);
    pdf.document_info(info)
        .title(TextStr(&title))
        .author(TextStr(&inv.seller.name))
        .producer(TextStr("Gatehouse"));
    for (page, (page_id, content_id)) in pages.into_iter().zip(ids) {
        let mut p = pdf.page(page_id);
        p.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H));
        p.parent(tree);
        p.contents(content_id);
        p.resources()
            .fonts()
            .pair(Font::Regular.name(), regular)
            .pair(Font::Bold.name(), bold);
        p.finish();
        let data = page.content.finish();
        pdf.stream(content_id, data.as_slice());
    }
    pdf.finish()
}

const HELVETICA: [u16; 224] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
    0, 556, 0, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, 0, 222, 222,
    333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500, 667, 278, 333, 556, 556, 556, 556,
    260, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333, 333, 333, 578, 537, 278, 333,
    333, 365, 556, 834, 834, 834, 611, 667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667,
    278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667,
    611, 556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, 556, 556,
    556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500,
];
const HELVETICA_BOLD: [u16; 224] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667,
    611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 333, 278, 333, 584, 556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556,
    278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
    0, 556, 0, 278, 556, 500, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, 0, 278, 278,
    500, 500, 350, 556, 1000, 333, 1000, 556, 333, 944, 0, 500, 667, 278, 333, 556, 556, 556, 556,
    280, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333, 333, 333, 611, 556, 278, 333,
    333, 365, 556, 834, 834, 834, 611, 722, 722, 722, 722, 722, 722, 1000, 722, 667, 667, 667, 667,
    278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667,
    611, 556, 556, 556, 556, 556, 556, 889, 556, 556, 556, 556, 556, 278, 278, 278, 278, 611, 611,
    611, 611, 611, 611, 611, 584, 611, 611, 611, 611, 611, 556, 611, 556,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_shown_in_the_currency_exponent() {
        assert_eq!(format_money(123450, "usd"), "$1,234.50");
        assert_eq!(format_money(-1250, "USD"), "-$12.50");
        assert_eq!(format_money(5, "usd"), "$0.05");
        assert_eq!(format_money(0, "eur"), "€0.00");
        assert_eq!(format_money(1_234_567, "jpy"), "¥1,234,567");
        assert_eq!(format_money(-1200, "JPY"), "-¥1,200");
        assert_eq!(format_money(1250, "kwd"), "KWD 1.250");
        assert_eq!(format_money(9990, "chf"), "CHF 99.90");
        assert_eq!(format_money(100, "gbp"), "£1.00");
        assert_eq!(format_money(i64::MIN, "usd"), "-$92,233,720,368,547,758.08");
        assert_eq!(format_quantity(-1_234_567), "-1,234,567");
        assert_eq!(format_quantity(999), "999");
    }

    #[test]
    fn periods_show_their_first_and_last_day() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let p = PdfPeriod {
            start: at("2026-01-01T00:00:00Z"),
            end: at("2026-02-01T00:00:00Z"),
        };
        assert_eq!(format_period(&p), "Jan 1, 2026 - Jan 31, 2026");
        let p = PdfPeriod {
            start: at("2026-01-15T10:00:00Z"),
            end: at("2026-01-15T18:00:00Z"),
        };
        assert_eq!(format_period(&p), "Jan 15, 2026");
    }

    #[test]
    fn long_text_wraps_within_the_width_and_unknown_characters_become_question_marks() {
        let text = "Gateway tokens beyond the plan's 1,000,000 included tokens, billed per 1,000 \
                    tokens; Supercalifragilisticexpialidocioussupercalifragilistic";
        let lines = wrap(text, Font::Regular, 9.0, 100.0);
        assert!(lines.len() > 3, "{lines:?}");
        for line in &lines {
            assert!(text_width(line, Font::Regular, 9.0) <= 100.0, "{line}");
        }
        assert_eq!(lines.join(" ").replace(' ', ""), text.replace(' ', ""));
        assert_eq!(encode("a€é中"), vec![b'a', 0x80, 0xe9, b'?']);
        assert_eq!(wrap("one\ntwo", Font::Regular, 9.0, 100.0), ["one", "two"]);
        assert_eq!(wrap("", Font::Regular, 9.0, 100.0), [""]);
        // A huge description costs a bounded amount and stays within its rows.
        let huge = "x".repeat(1_000_000);
        let lines = wrap(&huge, Font::Regular, 9.0, 100.0);
        assert_eq!(lines.concat().len(), MAX_TEXT);
        let line = PdfLine {
            description: format!("{huge} {huge}"),
            kind: "base".into(),
            quantity: 1,
            unit_amount: 1,
            amount: 1,
            period: PdfPeriod {
                start: Utc::now(),
                end: Utc::now(),
            },
        };
        let row = layout_row(&line);
        assert_eq!(row.description.len(), MAX_DESCRIPTION_LINES);
        let last = row.description.last().unwrap();
        assert!(last.ends_with(" ..."));
        assert!(text_width(last, Font::Regular, BODY) <= DESC_W);
    }

    #[test]
    fn a_total_that_is_not_the_sum_of_the_lines_is_refused() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let period = PdfPeriod {
            start: at("2026-01-01T00:00:00Z"),
            end: at("2026-02-01T00:00:00Z"),
        };
        let mut inv = PdfInvoice {
            number: "in_1".into(),
            issued: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
            due: NaiveDate::from_ymd_opt(2026, 2, 15).unwrap(),
            status: "open".into(),
            seller: PdfSeller {
                name: "S".into(),
                address_lines: vec![],
                email: "b@s.example".into(),
            },
            customer: PdfCustomer {
                organization_name: "O".into(),
                billing_email: None,
            },
            period,
            currency: "usd".into(),
            lines: vec![PdfLine {
                description: "Base".into(),
                kind: "base".into(),
                quantity: 1,
                unit_amount: 100,
                amount: 100,
                period,
            }],
            total: 101,
        };
        assert!(render(&inv).is_err());
        inv.total = 100;
        let pdf = render(&inv).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        // No lines: an invoice of nothing is still a document.
        inv.lines.clear();
        inv.total = 0;
        assert!(render(&inv).unwrap().starts_with(b"%PDF-"));
        inv.currency = "dollars".into();
        assert!(render(&inv).is_err());
    }
}
