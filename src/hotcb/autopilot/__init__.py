"""Rule autopilot: detectors over metric windows, declarative rules, bounded actions (DESIGN §9)."""
