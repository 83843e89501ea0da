// The machine-readable and the visual output of a benchmark run: every figure as JSON, and the ratios as an
// SVG bar chart (no dependency: both are written by hand).
#if canImport(Glibc)
import Glibc
#endif

/// Whether `candidate` is the C floor `row` is compared with (both rows of the same workload): a row of the
/// Dispatch backend, say, is compared with the libdispatch floor, not the libuv one.
public typealias FloorMatcher = (_ candidate: BenchmarkRow, _ row: BenchmarkRow) -> Bool

/// The C floor of a row: the first row of its workload `reference` accepts for it.
public func cFloor(of row: BenchmarkRow, in rows: [BenchmarkRow], reference: FloorMatcher?) -> BenchmarkRow? {
    guard let reference else { return nil }
    return rows.first { $0.workload == row.workload && reference($0, row) }
}

/// The row each row of a workload is compared with: its C floor when there is one, else the fastest row.
public func baseline(of row: BenchmarkRow, in rows: [BenchmarkRow], reference: FloorMatcher?) -> BenchmarkRow? {
    if let floor = cFloor(of: row, in: rows, reference: reference) { return floor }
    return rows.filter { $0.workload == row.workload }.max { $0.median < $1.median }
}

/// The fastest peer row (another library's) of the row's workload.
public func bestPeer(of row: BenchmarkRow, in rows: [BenchmarkRow], peer: (BenchmarkRow) -> Bool) -> BenchmarkRow? {
    rows.filter { $0.workload == row.workload && peer($0) && $0.median > 0 }.max { $0.median < $1.median }
}

/// Every row as JSON: ops/s (median, min, max, each repetition), the ratio to its baseline, the note.
public func json(
    _ rows: [BenchmarkRow], reference: FloorMatcher?, peer: ((BenchmarkRow) -> Bool)? = nil, context: [String: String]
) -> String {
    func string(_ text: String) -> String {
        var escaped = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": escaped += "\\\""
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case let c where c.value < 0x20: escaped += "\\u" + String(c.value, radix: 16).leftPadded(to: 4)
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped + "\""
    }
    func number(_ value: Double) -> String { value.isFinite ? String(Int(value.rounded())) : "null" }
    var lines: [String] = []
    for row in rows {
        let values = row.opsPerSecond
        let base = baseline(of: row, in: rows, reference: reference)
        let ratio = base.map { $0.median > 0 ? String(Double(Int(row.median / $0.median * 1000)) / 1000) : "null" } ?? "null"
        let best = peer.flatMap { bestPeer(of: row, in: rows, peer: $0) }
        let peerRatio = best.map { String(Double(Int(row.median / $0.median * 1000)) / 1000) } ?? "null"
        lines.append(
            "    {\"workload\": \(string(row.workload)), \"system\": \(string(row.system)), \"operations\": \(row.operations), "
                + "\"ops_per_s\": \(number(row.median)), \"min\": \(number(values.first ?? 0)), \"max\": \(number(values.last ?? 0)), "
                + "\"runs\": [\(values.map(number).joined(separator: ", "))], \"ratio\": \(ratio), "
                + "\"baseline\": \(string(base?.system ?? "")), \"ratio_to_best_peer\": \(peerRatio), "
                + "\"best_peer\": \(string(best?.system ?? "")), \"note\": \(string(row.extra))}")
    }
    let header = context.sorted { $0.key < $1.key }.map { "  \(string($0.key)): \(string($0.value))" }.joined(separator: ",\n")
    return "{\n\(header),\n  \"rows\": [\n\(lines.joined(separator: ",\n"))\n  ]\n}\n"
}

/// A horizontal bar chart of every row's ratio to its workload's baseline (1.0 = the baseline), grouped by
/// workload, with the value at the end of each bar.
public func svgChart(_ rows: [BenchmarkRow], reference: FloorMatcher?, title: String) -> String {
    func escape(_ text: String) -> String {
        text.replacingOccurrences("&", "&amp;").replacingOccurrences("<", "&lt;").replacingOccurrences(">", "&gt;")
    }
    let labelWidth = 430.0, barWidth = 360.0, rowHeight = 18.0, gap = 10.0
    let ratios = rows.map { row in baseline(of: row, in: rows, reference: reference).map { $0.median > 0 ? row.median / $0.median : 0 } ?? 0 }
    let scaleMax = max(1.0, ratios.max() ?? 1)
    var y = 40.0
    var body = ""
    var previous: String?
    for (row, ratio) in zip(rows, ratios) {
        if row.workload != previous {
            if previous != nil { y += gap }
            body += "<text x=\"4\" y=\"\(y + 12)\" font-weight=\"bold\">\(escape(row.workload))</text>\n"
            y += rowHeight
            previous = row.workload
        }
        let width = barWidth * ratio / scaleMax
        let isBaseline = baseline(of: row, in: rows, reference: reference)?.system == row.system
        let colour = isBaseline ? "#999999" : (row.system.contains("uv") ? "#3b7dd8" : row.system.contains("dispatch") ? "#e08a2c" : "#5aa469")
        body += "<text x=\"16\" y=\"\(y + 12)\">\(escape(row.system))</text>\n"
        body += "<rect x=\"\(labelWidth)\" y=\"\(y + 2)\" width=\"\(String(format2(width)))\" height=\"\(rowHeight - 5)\" fill=\"\(colour)\"/>\n"
        body += "<text x=\"\(labelWidth + width + 4)\" y=\"\(y + 12)\">\(format2(ratio)) × (\(format(row.median))/s)</text>\n"
        y += rowHeight
    }
    let oneX = labelWidth + barWidth / scaleMax
    let height = y + 20
    return """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(labelWidth + barWidth + 170))" height="\(Int(height))" font-family="sans-serif" font-size="11">
        <rect width="100%" height="100%" fill="white"/>
        <text x="4" y="18" font-size="14" font-weight="bold">\(escape(title))</text>
        <line x1="\(oneX)" y1="30" x2="\(oneX)" y2="\(height - 10)" stroke="#444" stroke-dasharray="3,3"/>
        <text x="\(oneX + 3)" y="36" fill="#444">1.0 × baseline</text>
        \(body)</svg>

        """
}

/// Writes `text` to `path`.
public func write(_ text: String, to path: String) throws {
    guard let file = fopen(path, "w") else { throw RuntimeErrorShim("cannot write \(path)") }
    defer { fclose(file) }
    fputs(text, file)
}

struct RuntimeErrorShim: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

private func format2(_ value: Double) -> String { String(Double(Int(value * 100)) / 100) }

extension String {
    fileprivate func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
    fileprivate func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
