"""End-to-end tests: real relays (processes where one matters), devices in temp dirs."""
