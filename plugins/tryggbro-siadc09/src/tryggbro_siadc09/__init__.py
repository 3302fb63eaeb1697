"""SIA DC-09 receiver for Tryggbro: a TCP source type and an adapter, both `sia-dc09`."""
