-- A race let concurrent registrations drive a bootstrap token's remaining uses
-- below zero (each use is now refused by the decrement itself): such a
-- token is used up.
UPDATE tokens SET uses_left = 0 WHERE uses_left < 0;
