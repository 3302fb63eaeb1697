"""Pure domain: events, states, routing and delivery decisions. Imports no framework."""
