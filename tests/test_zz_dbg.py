from tests.conftest import add_parser, api_client
def test_dbg(embedded_app):
    add_parser("echo", "echo_env.py")
    c = api_client(embedded_app)
    r = c.post("/api/v1/parsers/echo/runs", json={"args": {"who": "bob"}})
    print(r.status_code, r.json)
    r = c.post("/api/v1/parsers/echo/runs")
    print(r.status_code, r.json)
