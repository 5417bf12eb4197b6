"""Weather forecast for a city from open-meteo.com (no API key needed).

Arguments: ``--city NAME`` (default Moscow), ``--days N`` (1-16, default 3), ``--base_url``
(forecast API, default ``https://api.open-meteo.com/v1/forecast``), ``--geocoding_url``
(default ``https://geocoding-api.open-meteo.com/v1/search``), ``--delay S`` / ``--backoff S``
(politeness and retry waits, default 1).
Writes the current weather and one line per day to ``output.txt``, the answer to
``forecast.json``.
"""

from __future__ import annotations

import sys

from parseq_sdk import context, fetch, output, save_file

BASE_URL = "https://api.open-meteo.com/v1/forecast"
GEOCODING_URL = "https://geocoding-api.open-meteo.com/v1/search"
FORECAST_MAX_AGE_S = 600


def locate(city: str) -> dict:
    """The city's first geocoding match (cached for good: cities do not move)."""
    url = context.args.str("geocoding_url", GEOCODING_URL)
    answer = fetch(url, params={"name": city, "count": 1, "language": "en", "format": "json"})
    results = answer.json().get("results") or []
    if not results:
        raise SystemExit(f"no city named {city!r} found by {url}")
    return results[0]


def main() -> int:
    fetch.delay_s = context.args.float("delay", 1.0)  # politeness: seconds between requests
    fetch.backoff_s = context.args.float("backoff", 1.0)  # first retry wait, doubling
    city = context.args.str("city", "Moscow")
    days = context.args.int("days", 3)
    if not 1 <= days <= 16:
        print(f"--days must be between 1 and 16, got {days}", file=sys.stderr)
        return 2
    place = locate(city)
    forecast = fetch(
        context.args.str("base_url", BASE_URL),
        params={
            "latitude": place["latitude"],
            "longitude": place["longitude"],
            "current": "temperature_2m,wind_speed_10m",
            "daily": "temperature_2m_max,temperature_2m_min,precipitation_sum",
            "timezone": "auto",
            "forecast_days": days,
        },
        max_age=FORECAST_MAX_AGE_S,
    ).json()
    units, current = forecast.get("current_units", {}), forecast.get("current", {})
    where = f"{place['name']}, {place.get('country', '')}".rstrip(", ")
    output(
        f"{where} ({place['latitude']:.2f}, {place['longitude']:.2f}) at {current.get('time')}: "
        f"{current.get('temperature_2m')} {units.get('temperature_2m', '')}, "
        f"wind {current.get('wind_speed_10m')} {units.get('wind_speed_10m', '')}"
    )
    daily, dunits = forecast["daily"], forecast.get("daily_units", {})
    for i, day in enumerate(daily["time"][:days]):
        output(
            f"{day}: {daily['temperature_2m_min'][i]}..{daily['temperature_2m_max'][i]} "
            f"{dunits.get('temperature_2m_max', '')}, "
            f"precipitation {daily['precipitation_sum'][i]} {dunits.get('precipitation_sum', '')}"
        )
    save_file("forecast.json", {"place": place, "forecast": forecast})
    return 0


if __name__ == "__main__":
    sys.exit(main())
