"""Currency rates of the Central Bank of Russia for a day (its daily XML), in roubles.

Arguments: ``--date YYYY-MM-DD`` (default: the latest), ``--codes USD,EUR`` (default: all),
``--base_url`` (default ``https://www.cbr.ru/scripts/XML_daily.asp``), ``--max_age S`` (seconds
a cached answer is reused, default 3600), ``--delay S`` / ``--backoff S`` (politeness and retry
waits, default 1). Writes one line per currency to ``output.txt`` and all to ``rates.json``.
"""

from __future__ import annotations

import datetime as dt
import sys
import xml.etree.ElementTree as ET

from parseq_sdk import context, fetch, output, save_file

BASE_URL = "https://www.cbr.ru/scripts/XML_daily.asp"


def parse_rates(xml: bytes) -> tuple[str, dict[str, dict]]:
    """The date (ISO) and the rates of a ``ValCurs`` document."""
    root = ET.fromstring(xml)  # the XML declaration gives its encoding (windows-1251)
    if root.tag != "ValCurs":
        raise ValueError(f"expected a ValCurs document, got <{root.tag}>")
    date = dt.datetime.strptime(root.attrib["Date"], "%d.%m.%Y").date().isoformat()
    rates = {}
    for valute in root.iter("Valute"):
        code = valute.findtext("CharCode", "").strip()
        nominal = int(valute.findtext("Nominal", "1"))
        value = float(valute.findtext("Value", "").replace(",", "."))
        rates[code] = {
            "name": valute.findtext("Name", "").strip(),
            "nominal": nominal,
            "value": value,
            "per_unit": round(value / nominal, 6),
        }
    return date, rates


def main() -> int:
    fetch.delay_s = context.args.float("delay", 1.0)  # politeness: seconds between requests
    fetch.backoff_s = context.args.float("backoff", 1.0)  # first retry wait, doubling
    params = {}
    if day := context.args.str("date"):
        params["date_req"] = dt.date.fromisoformat(day).strftime("%d/%m/%Y")
    url = context.args.str("base_url", BASE_URL)
    # A past day's rates never change; today's may be published later in the day.
    max_age = None if day else context.args.float("max_age", 3600)
    response = fetch(url, params=params, max_age=max_age)
    date, rates = parse_rates(response.content)
    if codes := [c.upper() for c in context.args.list("codes")]:
        missing = sorted(set(codes) - set(rates))
        if missing:
            print(f"no rate for {', '.join(missing)} on {date}", file=sys.stderr)
            return 1
        rates = {code: rates[code] for code in codes}
    for code, rate in rates.items():
        output(f"{date} {rate['nominal']} {code} = {rate['value']:.4f} RUB ({rate['name']})")
    save_file("rates.json", {"date": date, "base": "RUB", "source": response.url, "rates": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
